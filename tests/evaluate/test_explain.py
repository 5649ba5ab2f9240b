"""Localisation of a trained classifier against the NIH boxes, end to end.

One `configs/eval/nih_localise.py:smoke` run (random-init trunk, so the
random-init reference is the run itself) on the session's synthetic NIH
build, whose box list the synthetic writer made for the lesions it drew.
The record's scores are recomputed here from the saved classifier in numpy:
for a global-average-pool + linear head, Grad-CAM at the last stage is
CAM, ReLU(A W_k) / (h w), upsampled; the pointing game and IoU come from
the boxes read back from the build and scaled by hand.
"""
import jax
import numpy as np
import pytest

from helpers import eval_config
from mlvicx_jax import checkpoint
from mlvicx_jax import evaluate
from mlvicx_jax import models
from mlvicx_jax import report
from mlvicx_jax.data import sources
from mlvicx_jax.evaluate import data as data_lib


@pytest.fixture(scope='module')
def run(nih_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('localise_run'))
  # Input size differs from the stored 96 px, so boxes and maps must be scaled.
  config = eval_config('nih_localise', data_dir=nih_data_dir, save_model=True, image_size=128)
  assert config.checkpoint == 'random' and config.localise.reference == 'random'
  records = evaluate.run(config, workdir)
  assert len(records) == 1  # the reference is the run itself
  return config, records[0], workdir


def _reference_maps(config, record, nih_data_dir):
  """{(file, class): CAM map} from the saved classifier, in numpy."""
  variables, meta, _ = checkpoint.restore_model(record['model'])
  cfg = checkpoint.model_config_from_json(meta['model_config'])
  backbone = models.build_backbone(cfg, meta['context_blocks'] == 'keep')
  data = data_lib.open_task_data(nih_data_dir, 'nih')
  boxes = sources.boxes(nih_data_dir, data.dataset, 'test')
  names = sources.file_names(nih_data_dir, data.dataset, 'test')
  positions = np.array([i for i, n in enumerate(names) if n in boxes])
  kernel = np.asarray(variables['params']['head']['kernel'], np.float64)
  trunk = {'params': variables['params']['backbone'],
           'batch_stats': variables['batch_stats']['backbone']}
  maps = {}
  for batch in data_lib.loader(config, data, 'test', train=False, indices=positions):
    keep = np.asarray(batch['mask'], bool)
    images = np.asarray(batch['image'])[keep]
    fmap = np.asarray(backbone.apply(trunk, images, train=False)['maps'][-1], np.float64)
    for name, a in zip(data_lib.file_names(batch, keep), fmap):
      for k in {int(c) for c in boxes[name][:, 4]}:
        cam = np.maximum(a @ kernel[:, k], 0) / (a.shape[0] * a.shape[1])
        up = jax.image.resize(cam, (config.image_size,) * 2, method='bilinear', antialias=False)
        maps[(name, k)] = np.maximum(np.asarray(up), 0)
  return boxes, maps


def _inside(row, col, box):
  x, y, w, h = box
  return x <= col + 0.5 <= x + w and y <= row + 0.5 <= y + h


def test_pointing_game_and_iou_equal_a_numpy_recomputation(run, nih_data_dir):
  config, record, _ = run
  loc = record['localisation']
  boxes, maps = _reference_maps(config, record, nih_data_dir)
  stored = sources.stored_image_size(nih_data_dir, 'nih')
  scale = config.image_size / stored
  hits, ious, per_class = [], [], {}
  for name, image_boxes in boxes.items():
    for x, y, w, h, c in image_boxes:
      box = (x * scale, y * scale, w * scale, h * scale)
      heatmap = maps[(name, int(c))]
      peak = heatmap.max()
      rows, cols = np.nonzero(heatmap == peak) if peak > 0 else ([], [])
      hit = any(_inside(r, q, box) for r, q in zip(rows, cols))
      grid_r, grid_c = np.mgrid[:heatmap.shape[0], :heatmap.shape[1]]
      in_box = np.vectorize(lambda r, q: _inside(r, q, box))(grid_r, grid_c)
      region = heatmap >= 0.5 * peak if peak > 0 else np.zeros_like(in_box)
      iou = (region & in_box).sum() / max((region | in_box).sum(), 1)
      hits.append(hit)
      ious.append(iou)
      per_class.setdefault(int(c), []).append(hit)
  assert len(hits) > 0 and loc['num_box_images'] == len(boxes)
  overall = loc['classifier']['overall']
  assert overall['num_boxes'] == len(hits)
  assert overall['pointing_game'] == pytest.approx(np.mean(hits), abs=1e-9)
  assert overall['iou@0.5'] == pytest.approx(np.mean(ious), abs=1e-6)
  per_finding = loc['classifier']['per_finding']
  class_names = sources.class_names(nih_data_dir, 'nih')
  for k, class_hits in per_class.items():
    assert per_finding[class_names[k]]['pointing_game'] == pytest.approx(np.mean(class_hits),
                                                                         abs=1e-9)
  assert loc['num_test_images'] == loc['num_box_images'] + loc['not_scored_images']


def test_centre_prior_is_scored_on_the_same_boxes(run, nih_data_dir):
  config, record, _ = run
  prior = record['localisation']['centre_prior']['overall']
  size = config.image_size
  boxes = sources.boxes(nih_data_dir, 'nih', 'test')
  scale = size / sources.stored_image_size(nih_data_dir, 'nih')
  centre = size / 2  # the Gaussian's maximum: the pixels around the centre
  peaks = [(r, q) for r in (int(centre) - 1, int(centre)) for q in (int(centre) - 1, int(centre))]
  hits = [any(_inside(r, q, (x * scale, y * scale, w * scale, h * scale)) for r, q in peaks)
          for image_boxes in boxes.values() for x, y, w, h, _ in image_boxes]
  assert prior['num_boxes'] == len(hits)
  assert prior['pointing_game'] == pytest.approx(np.mean(hits), abs=1e-9)
  assert prior['no_positive_evidence'] == 0


def test_report_shows_the_localisation_table_and_figure(run, tmp_path):
  _, record, workdir = run
  out = report.build_report([workdir], str(tmp_path / 'report'), n_boot=0)
  markdown = open(out['markdown']).read()
  assert '## Localisation against the NIH boxes' in markdown
  assert 'Grad-CAM at layer4 (synthetic data)' in markdown
  table = markdown.split('## Localisation against the NIH boxes', 1)[1]
  pointing = record['localisation']['classifier']['overall']['pointing_game']
  assert '| all findings | ' in table and f'{pointing:.3f} [' in table
  assert '| all findings | centre prior |' in table
  figures = [p for p in out['plots'] if 'localisation' in p]
  assert len(figures) == 1
  with open(figures[0], 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
