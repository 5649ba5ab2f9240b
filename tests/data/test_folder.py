"""--dataset=folder: a mixed tree prepares, skips the bad files by name, and pretrains.

Stored pixels are checked against independent computations (numpy on the
values written, PIL's own luma for the JPEG); the images are written at the
stored size, so the build's resize is the identity.
"""
import json
import os

import numpy as np
from PIL import Image
import pytest

from conftest import load_config
from mlvicx_jax.data import builders
from mlvicx_jax.data import sources
from mlvicx_jax.data import prepare as prepare_lib
from mlvicx_jax.synthetic import files as synthetic_files

SIZE = 96  # >= 96 px: XLA on CPU is very slow on smaller maps
FILLERS = 20  # plain 8-bit PNGs, so that train+validation fills a smoke batch of 16


def _write_tree(root):
  """The mixed tree; returns the values written for the independent checks."""
  rng = np.random.default_rng(7)
  os.makedirs(root / 'a' / 'deep')
  os.makedirs(root / 'b')
  os.makedirs(root / 'c')
  os.makedirs(root / 'fill')
  os.makedirs(root / '.cache')
  gray = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
  Image.fromarray(gray).save(root / 'a' / 'scan.png')
  Image.fromarray(gray[::-1]).save(root / 'b' / 'scan.png')  # same base name elsewhere
  deep = rng.integers(1000, 40000, (SIZE, SIZE)).astype(np.uint16)
  Image.fromarray(deep).save(root / 'a' / 'deep' / 'x16.png')
  rgb = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(root / 'b' / 'color.JPG', quality=95)
  dicom = rng.integers(0, 4096, (SIZE, SIZE)).astype(np.uint16)
  synthetic_files.write_dicom(str(root / 'c' / 'film.dcm'), dicom, patient_id='p7',
                        study_uid='1.2.3', series_uid='1.2.4', sop_uid='1.2.5',
                        photometric='MONOCHROME1', bits_stored=12, window=(2000.0, 2001.0))
  Image.fromarray(gray).save(root / 'c' / 'cut.png')
  data = (root / 'c' / 'cut.png').read_bytes()
  (root / 'c' / 'cut.png').write_bytes(data[:len(data) // 2])
  (root / 'notes.txt').write_text('not a radiograph')
  Image.fromarray(gray).save(root / '.cache' / 'hidden.png')  # passed over silently
  for i in range(FILLERS):
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(
        root / 'fill' / f'{i:02d}.png')
  return {'gray': gray, 'deep': deep, 'rgb_jpeg': root / 'b' / 'color.JPG', 'dicom': dicom}


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  root = tmp_path_factory.mktemp('folder')
  written = _write_tree(root / 'raw')
  data_dir = str(root / 'tfds')
  path = prepare_lib.prepare('folder', str(root / 'raw'), data_dir, image_size=SIZE)
  return root, written, data_dir, path


def _stored(data_dir, dataset, split='train+validation'):
  source = sources.data_source(data_dir, dataset, split)
  return {source[i]['file_name'].decode(): source[i] for i in range(len(source))}


def test_folder_prepares_every_image_and_skips_the_bad_files_by_name(tree):
  root, _, data_dir, path = tree
  stored = _stored(data_dir, 'folder')
  expected = {'a/scan.png', 'b/scan.png', 'a/deep/x16.png', 'b/color.JPG', 'c/film.dcm'}
  expected |= {f'fill/{i:02d}.png' for i in range(FILLERS)}
  assert set(stored) == expected  # unlabelled: no test split, every image pretrains
  assert all(r['label'].shape == (0,) for r in stored.values())
  assert stored['c/film.dcm']['patient_id'] == b'p7'
  report = json.loads((path / builders.SKIPPED_REPORT).read_text())
  reasons = {s['file_name']: s['reason'] for s in report['skipped']}
  assert set(reasons) == {'c/cut.png', 'notes.txt'}
  assert reasons['c/cut.png'].startswith('unreadable image:')
  assert reasons['notes.txt'].startswith('not an image:')
  assert report['by_reason'] == {'unreadable image': 1, 'not an image': 1}
  assert sources.class_names(data_dir, 'folder') == ()
  assert path.parent.name == 's96'


def test_folder_pixels_match_independent_computations(tree):
  _, written, data_dir, _ = tree
  stored = {k: r['image'][..., 0] for k, r in _stored(data_dir, 'folder').items()}
  np.testing.assert_array_equal(stored['a/scan.png'], written['gray'])
  np.testing.assert_array_equal(stored['b/scan.png'], written['gray'][::-1])
  # 16-bit PNG: no window, so the image's own range is stretched onto 0..255.
  deep = written['deep'].astype(np.float64)
  expected = np.round((deep - deep.min()) / (deep.max() - deep.min()) * 255)
  np.testing.assert_array_equal(stored['a/deep/x16.png'], expected.astype(np.uint8))
  # MONOCHROME1 with window (2000, 2001), PS3.3 C.11.2.1.2, then inverted.
  unit = np.clip((written['dicom'] - 1999.5) / 2000.0 + 0.5, 0, 1)
  np.testing.assert_array_equal(stored['c/film.dcm'], np.round(255 * (1 - unit)).astype(np.uint8))
  # RGB JPEG: ITU-R 601-2 luma of the decoded colours (PIL rounds its fixed point).
  rgb = np.asarray(Image.open(written['rgb_jpeg']).convert('RGB'), np.float64)
  luma = rgb @ np.array([0.299, 0.587, 0.114])
  assert np.abs(stored['b/color.JPG'].astype(np.float64) - luma).max() <= 1.0


def test_folder_labels_from_a_csv(tree, tmp_path):
  root, _, _, _ = tree
  data_dir = str(tmp_path / 'tfds')  # its own: 'folder' stays the one build of the fixture
  csv_path = tmp_path / 'labels.csv'
  csv_path.write_text('file,Effusion,patient_id,Mass\n'
                      'a/scan.png,1,p1,0\n'
                      'x16.png,0,p2,1\n'          # base name, unique in the tree
                      './b/color.JPG,1,p3,1\n'
                      'c/film.dcm,0,p3,0\n'
                      'gone.png,1,p4,1\n')        # names no image
  path = prepare_lib.prepare('folder', str(root / 'raw'), data_dir, image_size=SIZE,
                             labels_csv=str(csv_path))
  dataset = f'folder/{path.parent.name}'
  assert path.parent.name.startswith('s96_labels')
  assert sources.class_names(data_dir, dataset) == ('Effusion', 'Mass')
  stored = _stored(data_dir, dataset, 'train+validation+test')
  labels = {k: r['label'].tolist() for k, r in stored.items()}
  assert labels == {'a/scan.png': [1, 0], 'a/deep/x16.png': [0, 1], 'b/color.JPG': [1, 1],
                    'c/film.dcm': [0, 0]}
  by_split = {s: set(_stored(data_dir, dataset, s)) for s in ('train', 'validation', 'test')}
  assert not any('b/color.JPG' in by_split[s] and 'c/film.dcm' not in by_split[s]
                 for s in by_split)  # patient p3's two images share a split
  report = json.loads((path / builders.SKIPPED_REPORT).read_text())
  reasons = {s['file_name']: s['reason'].split(':')[0] for s in report['skipped']}
  assert reasons['gone.png'] == 'not found'
  assert reasons['b/scan.png'] == reasons['fill/00.png'] == 'no label'
  assert 'labels.csv' not in ' '.join(reasons)


def test_folder_labels_csv_errors_name_the_problem(tree, tmp_path):
  root, _, data_dir, _ = tree
  ambiguous = tmp_path / 'ambiguous.csv'
  ambiguous.write_text('file,Mass\nscan.png,1\n')
  with pytest.raises(ValueError, match=r"line 2: 'scan.png' matches .*a/scan.png"):
    prepare_lib.prepare('folder', str(root / 'raw'), data_dir, image_size=SIZE,
                        labels_csv=str(ambiguous))
  bad = tmp_path / 'bad.csv'
  bad.write_text('file,Mass\na/scan.png,-1\n')
  with pytest.raises(ValueError, match="line 2: column 'Mass' holds '-1'"):
    prepare_lib.prepare('folder', str(root / 'raw'), data_dir, image_size=SIZE,
                        labels_csv=str(bad))
  with pytest.raises(builders.MissingInputError, match='absent.csv'):
    prepare_lib.prepare('folder', str(root / 'raw'), data_dir, labels_csv=str(tmp_path / 'absent.csv'))
  with pytest.raises(builders.MissingInputError, match='no image'):
    prepare_lib.prepare('folder', str(tmp_path), data_dir)


def test_folder_pretrains_with_smoke_settings(tree):
  from mlvicx_jax.train import config_check  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import loop  # pylint: disable=g-import-not-at-top
  root, _, data_dir, _ = tree
  config = load_config('configs/nih.py', 'smoke')
  config.dataset, config.data_dir = 'folder', data_dir
  config.num_train_steps = config.checkpoint_every_steps = 2
  config.async_checkpointing = False
  metrics = loop.pretrain(config, str(root / 'run'))
  assert np.isfinite(metrics['loss'])
  config.monitor.every_steps = 4  # unlabelled: the k-NN monitor is refused by name
  with pytest.raises(config_check.ConfigError, match='monitor.every_steps: 4.*no labels'):
    loop.pretrain(config, str(root / 'run_monitored'))
