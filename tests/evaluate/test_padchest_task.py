"""PadChest as an evaluation task: configs/eval/padchest.py:smoke on the synthetic release.

References: the release CSV read here with csv and ast (labels of each test
image by the documented rule: entries stripped, matched exactly against the
22 names typed below), scikit-learn's roc_auc_score on the saved predictions,
and the report's markdown read as text.
"""
import ast
import csv
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from conftest import load_config
from mlvicx_jax import evaluate
from mlvicx_jax import report
from mlvicx_jax import vocabulary
from mlvicx_jax.data import sources
from mlvicx_jax.evaluate import data as data_lib
from mlvicx_jax.evaluate import __main__ as program
from mlvicx_jax.report import paper_results

CSV_NAME = 'PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv'
CLASSES = ['atelectasis', 'cardiomegaly', 'pleural effusion', 'infiltrates', 'mass', 'nodule',
           'pneumonia', 'pneumothorax', 'consolidation', 'pulmonary edema', 'emphysema',
           'pulmonary fibrosis', 'pleural thickening', 'hiatal hernia', 'pulmonary mass',
           'alveolar pattern', 'interstitial pattern', 'heart insufficiency', 'fibrotic band',
           'costophrenic angle blunting', 'aortic elongation', 'fracture']
HEADING = '## PadChest, frozen (linear probe): mean AUC'


def csv_labels(raw):
  """{ImageDir/ImageID: label vector over CLASSES} from the CSV text."""
  out = {}
  with open(os.path.join(raw, CSV_NAME), newline='') as f:
    for row in csv.DictReader(f):
      cell = row['Labels'].strip()
      entries = [] if cell.lower() in ('', 'nan') else [e.strip()
                                                        for e in ast.literal_eval(cell)]
      out[f'{row["ImageDir"]}/{row["ImageID"]}'] = np.array(
          [float(c in entries) for c in CLASSES])
  return out


@pytest.fixture(scope='module')
def run(padchest_data_dir, tmp_path_factory):
  """The :smoke config as the command reads it, on the session's PadChest build."""
  config = load_config('configs/eval/padchest.py', 'smoke')
  config.data_dir, config.protocol, config.n_boot = padchest_data_dir, 'frozen', 20
  workdir = str(tmp_path_factory.mktemp('padchest_task'))
  (record,) = evaluate.run(config, workdir)
  return config, record, workdir


def test_task_names_and_config():
  assert 'padchest' in vocabulary.CLASSIFICATION_TASKS and 'padchest' in vocabulary.TASKS
  assert vocabulary.TASK_METRIC['padchest'] == 'mean_auc'
  assert vocabulary.normalize_task('PadChest') == 'padchest'
  assert paper_results.TASK_TITLES['padchest'] == 'PadChest'
  for protocol in vocabulary.PROTOCOLS:
    assert paper_results.paper_table_for('padchest', protocol) is None
    for fraction in paper_results.FRACTIONS:
      assert paper_results.paper_reference('padchest', protocol, fraction) is None
  official = load_config('configs/eval/padchest.py')
  assert (official.task, official.classes) == ('padchest', 'all')
  assert official.label_fractions == (0.01, 0.1, 0.3, 1.0) and official.seeds == (0, 1, 2)
  with pytest.raises(ValueError, match='configs/eval/padchest.py'):
    load_config('configs/eval/padchest.py', 'paper')


def test_smoke_run_scores_every_class_against_the_csv(run, padchest_data_dir):
  _, record, workdir = run
  assert (record['task'], record['metric_name'], record['protocol']) == (
      'padchest', 'mean_auc', 'frozen')
  assert record['synthetic_data'] and record['label_policy'] is None  # every class, no policy
  assert program.record_line(record).startswith('padchest frozen f=1 seed=0: test mean_auc ')
  assert os.path.isfile(os.path.join(workdir, 'run_record_padchest_frozen_f1_seed0.json'))
  with np.load(os.path.join(workdir, record['predictions'])) as saved:
    pred = {k: saved[k] for k in saved.files}
  assert list(pred['class_names']) == CLASSES
  expected = csv_labels(os.path.join(os.path.dirname(padchest_data_dir), 'raw_padchest'))
  files = [str(f) for f in pred['file_names']]
  np.testing.assert_array_equal(pred['labels'], np.stack([expected[f] for f in files]))
  aucs = []
  for k, name in enumerate(CLASSES):
    y = pred['labels'][:, k]
    auc = sk_metrics.roc_auc_score(y, pred['scores'][:, k]) if 0 < y.sum() < len(y) else np.nan
    got = record['test']['per_class_auc'][name]
    assert (np.isnan(auc) and np.isnan(got)) or got == pytest.approx(auc, abs=1e-12), name
    aucs.append(auc)
  assert np.isfinite(aucs).sum() >= 2  # something was measured
  assert record['test']['mean_auc'] == pytest.approx(np.nanmean(aucs), abs=1e-12)


def test_report_titles_padchest_and_shows_no_paper_numbers(run, tmp_path):
  _, record, workdir = run
  out = report.build_report([workdir], str(tmp_path / 'synthetic'), labels=['smoke'],
                            n_boot=0, plots=False)
  text = pathlib.Path(out['markdown']).read_text(encoding='utf-8')
  assert f'{HEADING} (synthetic data)' in text
  assert '### Per-class AUC: PadChest, frozen (linear probe), smoke' in text
  # The same records as if measured on real X-rays: still no paper row, and said so.
  real = tmp_path / 'real'
  shutil.copytree(workdir, real)
  path = real / 'run_record_padchest_frozen_f1_seed0.json'
  path.write_text(json.dumps(dict(json.loads(path.read_text()), synthetic_data=False)))
  out = report.build_report([str(real)], str(tmp_path / 'real_report'), labels=['real'],
                            n_boot=0, plots=False)
  text = pathlib.Path(out['markdown']).read_text(encoding='utf-8')
  assert f'{HEADING} (not reported in the paper)' in text
  assert '(paper)' not in text and 'Table I' not in text
  row = next(line for line in text.split(HEADING, 1)[1].splitlines()
             if line.startswith('| real'))
  assert f'{record["test"]["mean_auc"]:.3f}' in row
  summary = json.loads(pathlib.Path(out['summary']).read_text(encoding='utf-8'))
  cells = [c for c in summary['cells'] if c['task'] == 'padchest']
  assert cells and all(c['paper'] is None for c in cells)


def test_config_build_names_one_of_several_builds(nih_data_dir, tmp_path):
  """Two builds of one dataset: without config.build one line names the field; with it,
  that build is read."""
  build = os.path.join(nih_data_dir, 'nih', 's96')
  for name in ('s96', 's96_physician'):
    os.makedirs(tmp_path / 'nih', exist_ok=True)
    os.symlink(build, tmp_path / 'nih' / name)
  with pytest.raises(ValueError, match=r'several builds .*--config\.build=<config>'):
    data_lib.open_task_data(str(tmp_path), 'nih')
  data = data_lib.open_task_data(str(tmp_path), 'nih', build='s96_physician')
  assert data.dataset == 'nih/s96_physician'
  assert data.sizes == {split: sources.num_examples(nih_data_dir, 'nih', split)
                        for split in data.sizes}
