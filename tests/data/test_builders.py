"""Builders on synthetic data in each dataset's real layout, and on bad input."""
import collections
import csv
import glob
import json
import os
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from mlvicx_jax.data import builders
from mlvicx_jax.data import sources
from mlvicx_jax.data import prepare as prepare_lib
from mlvicx_jax import synthetic

SIZE = 64
# SPEC section 3 order, written out independently of the code's constant.
NIH_LABELS = ['Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass', 'Nodule',
              'Pneumonia', 'Pneumothorax', 'Consolidation', 'Edema', 'Emphysema',
              'Fibrosis', 'Pleural_Thickening', 'Hernia']


def reference_rle_decode(rle, height, width):
  """Independent SIIM decoder: gaps and runs walked pixel by pixel, column-major."""
  mask = np.zeros((height, width), np.uint8)
  values = [] if rle.strip() == '-1' else [int(t) for t in rle.split()]
  position = 0
  for gap, length in zip(values[0::2], values[1::2]):
    position += gap
    for p in range(position, position + length):
      mask[p % height, p // height] = 1
    position += length
  return mask


def build(raw, out, dataset, **kwargs):
  path = prepare_lib.prepare(dataset, str(raw), str(out), image_size=SIZE, **kwargs)
  return path, {split: tfds.data_source(f'{dataset}/{path.parent.name}', split=split,
                                        data_dir=str(out))
                for split in ('train', 'validation', 'test')
                if (path / f'{dataset}-{split}.array_record-00000-of-00001').exists()}


def records(source):
  return [source[i] for i in range(len(source))]


def skipped(path):
  return json.loads((path / 'skipped.json').read_text())


@pytest.fixture(scope='module')
def nih_raw(tmp_path_factory):
  raw = tmp_path_factory.mktemp('nih_raw')
  synthetic.generate('nih', str(raw), num_images=40, seed=1, image_size=SIZE)
  return raw


def test_nih_counts_labels_and_patient_splits(nih_raw, tmp_path):
  path, sources = build(nih_raw, tmp_path, 'nih')
  rows = {r['Image Index']: r for r in csv.DictReader(open(nih_raw / 'Data_Entry_2017.csv'))}
  train_val = open(nih_raw / 'train_val_list.txt').read().split()
  test_list = open(nih_raw / 'test_list.txt').read().split()
  got = {s: records(src) for s, src in sources.items()}
  names = {s: {r['file_name'].decode() for r in rs} for s, rs in got.items()}
  assert names['test'] == set(test_list)
  assert names['train'] | names['validation'] == set(train_val)
  assert not names['train'] & names['validation']
  patients = {s: {r['patient_id'].decode() for r in rs} for s, rs in got.items()}
  assert patients['validation'] and not patients['train'] & patients['validation']
  for split_records in got.values():
    for r in split_records:
      row = rows[r['file_name'].decode()]
      expected = np.array([label in row['Finding Labels'].split('|') for label in NIH_LABELS],
                          np.float32)
      np.testing.assert_array_equal(r['label'], expected)
      assert r['patient_id'].decode() == row['Patient ID']
      # Same size: the stored pixels are the source PNG's gray values.
      source = np.asarray(Image.open(nih_raw / 'images' / row['Image Index']).convert('L'))
      np.testing.assert_array_equal(r['image'][..., 0], source)
  metadata = json.loads((path / 'metadata.json').read_text())
  assert 'patient' in metadata['split_rule'] and metadata['seed'] == 0
  assert skipped(path)['num_skipped'] == 0


def test_nih_kaggle_layout(tmp_path):
  raw = tmp_path / 'raw'
  synthetic.generate('nih', str(raw), num_images=15, seed=2, image_size=SIZE,
                     nih_layout='kaggle')
  assert glob.glob(str(raw / 'images_012' / 'images' / '*.png'))
  path, sources = build(raw, tmp_path / 'out', 'nih')
  assert sum(len(s) for s in sources.values()) == 15


def test_nih_bad_images_are_skipped_and_listed(nih_raw, tmp_path):
  raw = tmp_path / 'raw'
  shutil.copytree(nih_raw, raw)
  pngs = sorted(os.listdir(raw / 'images'))
  corrupt, truncated, missing = pngs[:3]
  (raw / 'images' / corrupt).write_bytes(b'not a png at all')
  data = (raw / 'images' / truncated).read_bytes()
  (raw / 'images' / truncated).write_bytes(data[:len(data) // 2])
  os.remove(raw / 'images' / missing)
  path, sources = build(raw, tmp_path / 'out', 'nih')
  report = skipped(path)
  # Box-list rows of a missing image are listed too, after the image itself.
  images = [s for s in report['skipped'] if not s['reason'].startswith('box row')]
  listed = {s['file_name']: s['reason'] for s in images}
  assert len(images) == 3 and set(listed) == {corrupt, truncated, missing}
  assert {s['file_name'] for s in report['skipped']} == set(listed)
  assert 'absent' in listed[missing] and 'unreadable' in listed[corrupt]
  assert 'unreadable' in listed[truncated]
  assert sum(len(s) for s in sources.values()) == 40 - 3


@pytest.mark.parametrize('missing', ['Data_Entry_2017.csv', 'test_list.txt', 'train_val_list.txt'])
def test_nih_missing_csv_or_split_file_stops_before_writing(nih_raw, tmp_path, missing):
  raw = tmp_path / 'raw'
  shutil.copytree(nih_raw, raw)
  os.remove(raw / missing)
  out = tmp_path / 'out'
  with pytest.raises(builders.MissingInputError, match=missing):
    prepare_lib.prepare('nih', str(raw), str(out), image_size=SIZE)
  assert not out.exists()


def test_rebuild_never_corrupts_the_first(nih_raw, tmp_path, monkeypatch):
  out = tmp_path / 'out'
  path, sources = build(nih_raw, out, 'nih')
  before = {f: (path / f).read_bytes() for f in os.listdir(path)}
  # Without --overwrite the finished build is reused untouched.
  assert prepare_lib.prepare('nih', str(nih_raw), str(out), image_size=SIZE) == path
  # A rebuild that fails half-way leaves the first build exactly as it was.
  def explode(*args, **kwargs):
    raise RuntimeError('disk on fire')
  monkeypatch.setattr(builders.base, '_decode', explode)
  with pytest.raises(RuntimeError, match='disk on fire'):
    prepare_lib.prepare('nih', str(nih_raw), str(out), image_size=SIZE, overwrite=True)
  monkeypatch.undo()
  assert {f: (path / f).read_bytes() for f in os.listdir(path)} == before
  # A successful rebuild replaces it; no staging folders are left behind.
  raw = tmp_path / 'raw'
  shutil.copytree(nih_raw, raw)
  os.remove(raw / 'images' / sorted(os.listdir(raw / 'images'))[0])
  path2, sources2 = build(raw, out, 'nih', overwrite=True)
  assert path2 == path and skipped(path)['num_skipped'] == 1
  assert sum(len(s) for s in sources2.values()) == 39
  assert not [d for d in os.listdir(out) if d.startswith('.staging')]


@pytest.fixture(scope='module')
def vinbig_raw(tmp_path_factory):
  raw = tmp_path_factory.mktemp('vinbig_raw')
  synthetic.generate('vinbig', str(raw), num_images=30, seed=3, image_size=SIZE)
  return raw


def test_vinbig_labels_any_and_majority(vinbig_raw, tmp_path):
  readers, marks = collections.defaultdict(set), collections.defaultdict(set)
  for row in csv.DictReader(open(vinbig_raw / 'train.csv')):
    readers[row['image_id']].add(row['rad_id'])
    if row['class_id'] != '14':
      marks[(row['image_id'], int(row['class_id']))].add(row['rad_id'])
  differ = 0
  for rule in ('any', 'majority'):
    path, sources = build(vinbig_raw, tmp_path / rule, 'vinbig', vinbig_label_rule=rule)
    assert path.parent.name == f's{SIZE}_{rule}'
    got = {s: records(src) for s, src in sources.items()}
    assert {s: len(r) for s, r in got.items()} == {'train': 21, 'validation': 3, 'test': 6}
    names = [r['file_name'].decode() for rs in got.values() for r in rs]
    assert sorted(names) == sorted(readers)
    for r in (r for rs in got.values() for r in rs):
      image_id = r['file_name'].decode()
      votes = np.array([len(marks[(image_id, c)]) for c in range(14)])
      expected = votes >= 1 if rule == 'any' else votes >= 2  # 3 readers each.
      np.testing.assert_array_equal(r['label'], expected.astype(np.float32))
      np.testing.assert_array_equal(r['votes'], votes)
      assert r['image'].shape == (SIZE, SIZE, 1)
      differ += rule == 'any' and (votes == 1).any()
  assert differ  # Some findings have a single vote: the rules disagree there.


def test_vinbig_missing_csv(vinbig_raw, tmp_path):
  raw = tmp_path / 'raw'
  shutil.copytree(vinbig_raw, raw)
  os.remove(raw / 'train.csv')
  with pytest.raises(builders.MissingInputError, match='train.csv'):
    prepare_lib.prepare('vinbig', str(raw), str(tmp_path / 'out'))


def test_rsna_labels_splits_and_bad_dicom(tmp_path):
  raw = tmp_path / 'raw'
  synthetic.generate('rsna', str(raw), num_images=30, seed=4, image_size=SIZE)
  targets = collections.defaultdict(int)
  for row in csv.DictReader(open(raw / 'stage_2_train_labels.csv')):
    targets[row['patientId']] |= int(row['Target'])
  broken = sorted(targets)[0]
  dicom = raw / 'stage_2_train_images' / f'{broken}.dcm'
  dicom.write_bytes(dicom.read_bytes()[:400])  # Truncated DICOM.
  path, sources = build(raw, tmp_path / 'out', 'rsna')
  got = {s: records(src) for s, src in sources.items()}
  seen = set()
  for rs in got.values():
    for r in rs:
      pid = r['file_name'].decode()
      assert r['patient_id'].decode() == pid and pid not in seen
      seen.add(pid)
      assert r['label'][0] == targets[pid]
  assert seen == set(targets) - {broken}
  assert [s['file_name'] for s in skipped(path)['skipped']] == [broken]


@pytest.fixture(scope='module')
def siim_raw(tmp_path_factory):
  raw = tmp_path_factory.mktemp('siim_raw')
  synthetic.generate('siim', str(raw), num_images=40, seed=5, image_size=SIZE)
  return raw


def _siim_rows(raw):
  rows = collections.defaultdict(list)
  with open(raw / 'train-rle.csv') as f:
    for image_id, rle in list(csv.reader(f))[1:]:
      rows[image_id].append(rle)
  return rows


def test_siim_masks_balance_and_splits(siim_raw, tmp_path):
  rows = _siim_rows(siim_raw)
  positives = {i for i, r in rows.items() if any(x.strip() != '-1' for x in r)}
  assert any(len(r) > 1 for r in rows.values())  # Some masks come in several rows.
  path, sources = build(siim_raw, tmp_path / 'out', 'siim')
  got = [r for src in sources.values() for r in records(src)]
  labels = [r['label'][0] for r in got]
  assert sum(labels) == len(positives) == len(got) - sum(labels)  # Balanced.
  for r in got:
    image_id = r['file_name'].decode()
    expected = np.zeros((SIZE, SIZE), np.uint8)
    for rle in rows[image_id]:
      expected |= reference_rle_decode(rle, SIZE, SIZE)
    np.testing.assert_array_equal(r['mask'][..., 0] > 127, expected.astype(bool))
    assert r['label'][0] == (image_id in positives) and r['patient_id']
  sizes = {s: len(src) for s, src in sources.items()}
  assert sizes['validation'] == 2 * round(0.2 * len(positives))


def test_siim_malformed_rle_row_is_skipped(siim_raw, tmp_path):
  raw = tmp_path / 'raw'
  shutil.copytree(siim_raw, raw)
  rows = _siim_rows(raw)
  bad = sorted(i for i, r in rows.items() if r[0].strip() != '-1')[0]
  with open(raw / 'train-rle.csv', 'a') as f:
    f.write(f'{bad}, 5 x 7\n')
  path, sources = build(raw, tmp_path / 'out', 'siim')
  listed = skipped(path)['skipped']
  assert [s['file_name'] for s in listed] == [bad] and 'RLE' in listed[0]['reason']
  names = {r['file_name'].decode() for src in sources.values() for r in records(src)}
  assert bad not in names


def test_siim_missing_rle_csv(siim_raw, tmp_path):
  raw = tmp_path / 'raw'
  shutil.copytree(siim_raw, raw)
  os.remove(raw / 'train-rle.csv')
  with pytest.raises(builders.MissingInputError, match='train-rle.csv'):
    prepare_lib.prepare('siim', str(raw), str(tmp_path / 'out'))


def test_default_config_and_options_get_their_own_folder(nih_raw, tmp_path):
  default = prepare_lib.prepare('nih', str(nih_raw), str(tmp_path))
  assert default.relative_to(tmp_path).parts == ('nih', 's256', '1.1.0')
  source = tfds.data_source('nih/s256', split='test', data_dir=str(tmp_path))
  assert source[0]['image'].shape == (256, 256, 1)
  # The 1.0.0 layout (PNG) is still written on request and reads back the same pixels.
  png = prepare_lib.prepare('nih', str(nih_raw), str(tmp_path), image_encoding='png')
  assert png.parent.name == 's256_png'
  assert (png / 'features.json').read_text().count('"png"') >= 1
  assert '"png"' not in (default / 'features.json').read_text()
  raw_images = {r['file_name']: r['image'] for r in records(
      sources.data_source(str(tmp_path), 'nih/s256', 'test'))}
  for r in records(sources.data_source(str(tmp_path), 'nih/s256_png', 'test')):
    assert r['image'].dtype == np.uint8
    np.testing.assert_array_equal(r['image'], raw_images[r['file_name']])
  other = prepare_lib.prepare('nih', str(nih_raw), str(tmp_path), image_size=SIZE, seed=3,
                              validation_fraction=0.25)
  assert other.parent.name == f's{SIZE}_seed3_val25'
  metadata = json.loads((other / 'metadata.json').read_text())
  assert metadata['seed'] == 3 and metadata['validation_fraction_of_patients'] == 0.25


def test_decoding_in_a_worker_process_gives_the_same_build(tmp_path):
  raw = tmp_path / 'raw'
  synthetic.generate('rsna', str(raw), num_images=8, seed=6, image_size=SIZE)
  _, serial = build(raw, tmp_path / 'serial', 'rsna')
  _, pooled = build(raw, tmp_path / 'pooled', 'rsna', num_workers=1)
  for split in serial:
    for a, b in zip(records(serial[split]), records(pooled[split])):
      assert a['file_name'] == b['file_name']
      np.testing.assert_array_equal(a['image'], b['image'])


@pytest.mark.parametrize('dataset', sorted(builders.BUILDERS))
def test_default_options_give_the_predefined_config(dataset):
  """tfds refuses a fresh config named like a predefined one (a default-option build)."""
  config = builders.make_config(dataset)
  assert any(config is c for c in builders.BUILDERS[dataset].BUILDER_CONFIGS), config.name


def test_folder_builds_at_the_default_size(tmp_path):
  tree = tmp_path / 'tree'
  tree.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)).save(tree / f'{i}.png')
  path = prepare_lib.prepare('folder', str(tree), str(tmp_path / 'out'))
  assert path.parent.name == 's256'
  source = sources.data_source(str(tmp_path / 'out'), 'folder', 'train')
  assert source[0]['image'].shape == (256, 256, 1)


def test_builds_say_whether_their_images_are_synthetic(nih_raw, tmp_path):
  """A synthetic download carries the marker; its builds (NIH, or its images as a folder)
  say so, a tree without the marker does not, and the marker is not an image to skip."""
  assert (nih_raw / 'SYNTHETIC').is_file()
  build(nih_raw, tmp_path / 'nih', 'nih')
  assert sources.is_synthetic(str(tmp_path / 'nih'), 'nih')
  prepare_lib.prepare('folder', str(nih_raw / 'images'), str(tmp_path / 'plain'), image_size=SIZE)
  assert not sources.is_synthetic(str(tmp_path / 'plain'), 'folder')
  path = prepare_lib.prepare('folder', str(nih_raw), str(tmp_path / 'tree'), image_size=SIZE)
  assert sources.is_synthetic(str(tmp_path / 'tree'), 'folder')
  assert 'SYNTHETIC' not in {s['file_name'] for s in skipped(path)['skipped']}
