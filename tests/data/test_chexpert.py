"""CheXpert builder and the load-time uncertainty policies on a hand-written layout.

The layout is written here row by row with the real release's quirks (the
real header, cells '1.0' '0.0' '-1.0' and blank, No Finding 1.0 or blank,
laterals with a blank AP/PA, 'LL'/'RL', Sex 'Unknown', an all-blank row,
several studies per patient out of order, valid.csv 0/1 only). The label
references are transcribed from the CSV text by the test itself, by the
policies as documented (CheXpert paper, Irvin et al. 2019).
"""
import csv
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from mlvicx_jax.data import builders
from mlvicx_jax.data import pipelines
from mlvicx_jax.data import sources
from mlvicx_jax.data import prepare as prepare_lib

SIZE = 32
RELEASE = 'CheXpert-v1.0-small'
OBSERVATIONS = ['No Finding', 'Enlarged Cardiomediastinum', 'Cardiomegaly', 'Lung Opacity',
                'Lung Lesion', 'Edema', 'Consolidation', 'Pneumonia', 'Atelectasis',
                'Pneumothorax', 'Pleural Effusion', 'Pleural Other', 'Fracture',
                'Support Devices']
HEADER = ['Path', 'Sex', 'Age', 'Frontal/Lateral', 'AP/PA'] + OBSERVATIONS
COMPETITION = ['Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Pleural Effusion']


# Observation cells of a study (No Finding only 1.0 or blank, as in the release).
PATTERNS = [
    ['', '', '1.0', '-1.0', '', '', '', '', '-1.0', '', '1.0', '', '', '1.0'],
    ['1.0', '', '', '', '', '', '0.0', '', '', '0.0', '', '', '', ''],
    ['', '-1.0', '0.0', '1.0', '', '-1.0', '-1.0', '', '', '', '0.0', '', '1.0', ''],
    [''] * 14,  # every observation blank
    ['', '', '-1.0', '', '1.0', '1.0', '', '-1.0', '0.0', '', '-1.0', '1.0', '', '0.0'],
]


def _train_rows():
  """12 patients with 1-3 studies each, written out of study order; laterals, LL/RL."""
  rows = []
  for p in range(1, 13):
    sex = 'Unknown' if p == 5 else ('Female' if p % 2 else 'Male')
    studies = list(range(1, 2 + p % 3))
    for study in (studies[::-1] if p % 2 == 0 else studies):
      cells = PATTERNS[(p + study) % len(PATTERNS)]
      views = [('Frontal', ('AP', 'PA', 'LL' if p % 2 else 'RL')[study - 1])]
      if study == 2:
        views.append(('Lateral', ''))
      for number, (view, ap_pa) in enumerate(views, start=1):
        path = f'{RELEASE}/train/patient{p:05d}/study{study}/view{number}_{view.lower()}.jpg'
        rows.append([path, sex, str(40 + p), view, ap_pa] + list(cells))
  return rows


def _valid_rows():
  rows = []
  for p, cells in ((64541, '0.0 0.0 1.0 0.0 0.0 1.0 0.0 0.0 0.0 0.0 1.0 0.0 0.0 1.0'),
                   (64542, '1.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0'),
                   (64543, '0.0 0.0 0.0 1.0 0.0 0.0 1.0 0.0 1.0 0.0 1.0 0.0 0.0 0.0')):
    rows.append([f'{RELEASE}/valid/patient{p}/study1/view1_frontal.jpg', 'Male', '70',
                 'Frontal', 'AP'] + cells.split())
  rows.append([f'{RELEASE}/valid/patient64543/study1/view2_lateral.jpg', 'Male', '70',
               'Lateral', ''] + rows[-1][5:])
  return rows


def write_layout(root, train_rows, valid_rows):
  release = os.path.join(root, RELEASE)
  rng = np.random.default_rng(0)
  for name, rows in (('train.csv', train_rows), ('valid.csv', valid_rows)):
    os.makedirs(release, exist_ok=True)
    with open(os.path.join(release, name), 'w', newline='') as f:
      writer = csv.writer(f, lineterminator='\n')
      writer.writerow(HEADER)
      writer.writerows(rows)
    for row in rows:
      path = os.path.join(root, row[0])
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.fromarray(rng.integers(0, 255, (40, 40), np.uint8)).save(path, format='JPEG')
  return release


def reference(cells, policy):
  """(label, mask) of one row's cells under a policy, from the cell text."""
  label = [1.0 if c == '1.0' or (policy == 'u_ones' and c == '-1.0') else 0.0 for c in cells]
  mask = [not (policy == 'ignore' and c == '-1.0') for c in cells]
  return np.array(label, np.float32), np.array(mask, bool)


@pytest.fixture(scope='module')
def layout(tmp_path_factory):
  root = tmp_path_factory.mktemp('chexpert_raw')
  train, valid = _train_rows(), _valid_rows()
  write_layout(str(root), train, valid)
  data_dir = str(tmp_path_factory.mktemp('chexpert_tfds'))
  prepare_lib.prepare('chexpert', str(root), data_dir, image_size=SIZE, num_workers=0)
  return root, data_dir, train, valid


def _read(data_dir, dataset, split, policy, classes=None):
  """{file name: (label, label_mask)} through the evaluation loader."""
  out = {}
  for batch in pipelines.classification_loader(
      data_dir, dataset, split=split, image_size=SIZE, batch_size=8, seed=0, train=False,
      shard_index=0, shard_count=1, uncertain=policy, classes=classes):
    for k in np.flatnonzero(batch['mask']):
      out[batch['file_name'][k].decode()] = (batch['label'][k], batch['label_mask'][k])
  return out


def test_quirks_are_in_the_layout():
  train = _train_rows()
  cells = {c for row in train for c in row[5:]}
  assert cells == {'1.0', '0.0', '-1.0', ''}
  assert any(all(c == '' for c in row[5:]) for row in train)
  assert {row[4] for row in train if row[3] == 'Lateral'} == {''}
  assert {'LL', 'RL', 'AP', 'PA'} <= {row[4] for row in train}
  assert {row[5] for row in train} == {'1.0', ''}  # No Finding
  studies = [int(row[0].split('/')[3][5:]) for row in train if 'patient00002' in row[0]]
  assert studies != sorted(studies)
  assert 'Unknown' in {row[1] for row in train}


def test_labels_under_each_policy_match_the_csv(layout):
  _, data_dir, train, valid = layout
  by_name = {row[0].split('/', 1)[1]: row[5:] for row in train + valid}
  competition = [OBSERVATIONS.index(n) for n in COMPETITION]
  checked = 0
  for policy in ('ignore', 'u_ones', 'u_zeros'):
    seen = {}
    for split in ('train', 'validation', 'test'):
      seen.update(_read(data_dir, 'chexpert', split, policy))
    assert set(seen) == set(by_name)  # every row, once
    for name, (label, mask) in seen.items():
      want_label, want_mask = reference(by_name[name], policy)
      np.testing.assert_array_equal(label, want_label, err_msg=f'{policy} {name}')
      np.testing.assert_array_equal(mask, want_mask, err_msg=f'{policy} {name}')
      checked += 1
    # The competition columns, in the preset's order.
    for name, (label, mask) in _read(data_dir, 'chexpert', 'train', policy,
                                     competition).items():
      want_label, want_mask = reference([by_name[name][i] for i in competition], policy)
      np.testing.assert_array_equal(label, want_label)
      np.testing.assert_array_equal(mask, want_mask)
  assert checked == 3 * (len(train) + len(valid))
  # The three policies differ on this data (there are uncertain cells).
  ignore = _read(data_dir, 'chexpert', 'train', 'ignore')
  assert not all(m.all() for _, m in ignore.values())


def test_features_patients_and_splits(layout):
  _, data_dir, train, valid = layout
  patients, rows = {}, {}
  for split in ('train', 'validation', 'test'):
    source = sources.data_source(data_dir, 'chexpert', split)
    records = [source[i] for i in range(len(source))]
    patients[split] = {r['patient_id'].decode() for r in records}
    rows.update({r['file_name'].decode(): r for r in records})
  assert not patients['train'] & patients['validation']
  assert not (patients['train'] | patients['validation']) & patients['test']
  assert patients['test'] == {row[0].split('/')[2] for row in valid}
  assert len(patients['validation']) == 1  # round(0.1 * 12 patients)
  for row in train + valid:
    record = rows[row[0].split('/', 1)[1]]
    assert record['patient_id'].decode() == row[0].split('/')[2]
    assert record['study'].decode() == '/'.join(row[0].split('/')[2:4])
    assert (record['view'].decode(), record['ap_pa'].decode()) == (row[3], row[4])
    assert (record['sex'].decode(), int(record['age'])) == (row[1], int(row[2]))
    assert record['image'].shape == (SIZE, SIZE, 1)


def test_frontal_only_from_the_release_folder_itself(layout, tmp_path):
  root, _, train, valid = layout
  path = prepare_lib.prepare('chexpert', str(root / RELEASE), str(tmp_path), image_size=SIZE,
                             num_workers=0, frontal_only=True)
  assert path.parent.name == f's{SIZE}_frontal'
  names = []
  for split in ('train', 'validation', 'test'):
    source = sources.data_source(str(tmp_path), 'chexpert', split)
    names += [source[i]['file_name'].decode() for i in range(len(source))]
    assert {source[i]['view'] for i in range(len(source))} == {b'Frontal'}
  assert sorted(names) == sorted(r[0].split('/', 1)[1] for r in train + valid
                                 if r[3] == 'Frontal')
  with pytest.raises(ValueError, match='CheXpert option'):
    builders.make_config('nih', frontal_only=True)


@pytest.mark.parametrize('missing', ['train.csv', 'valid.csv'])
def test_missing_csv_is_named(tmp_path, missing):
  release = write_layout(str(tmp_path / 'raw'), _train_rows()[:2], _valid_rows()[:1])
  os.remove(os.path.join(release, missing))
  with pytest.raises(builders.MissingInputError, match=missing):
    prepare_lib.prepare('chexpert', str(tmp_path / 'raw'), str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out')


def test_unknown_cell_names_file_line_and_column(tmp_path):
  train = _train_rows()[:3]
  train[2][5 + OBSERVATIONS.index('Edema')] = '2.0'
  write_layout(str(tmp_path / 'raw'), train, _valid_rows()[:1])
  with pytest.raises(ValueError, match=r"train.csv: line 4: column 'Edema': unknown value '2.0'"):
    prepare_lib.prepare('chexpert', str(tmp_path / 'raw'), str(tmp_path / 'out'),
                        image_size=SIZE, num_workers=0)
  shutil.rmtree(tmp_path / 'out', ignore_errors=True)


def test_synthetic_writer_has_the_release_quirks(tmp_path):
  from mlvicx_jax import synthetic  # pylint: disable=g-import-not-at-top
  counts = synthetic.generate('chexpert', str(tmp_path), 200, seed=0, image_size=48)
  release = tmp_path / RELEASE
  tables = {}
  for name in ('train', 'valid'):
    with open(release / f'{name}.csv', newline='') as f:
      rows = list(csv.reader(f))
    assert rows[0] == HEADER
    tables[name] = rows[1:]
  train, valid = tables['train'], tables['valid']
  assert len(train) + len(valid) == counts['num_images'] == 200
  assert {c for r in train for c in r[5:]} == {'1.0', '0.0', '-1.0', ''}
  assert {c for r in valid for c in r[5:]} == {'1.0', '0.0'}
  assert {r[5] for r in train} == {'1.0', ''}  # No Finding
  assert {r[4] for r in train + valid if r[3] == 'Lateral'} == {''}
  assert {'AP', 'PA', 'LL', 'RL'} <= {r[4] for r in train if r[3] == 'Frontal'}
  assert 'Unknown' in {r[1] for r in train + valid}
  assert any(all(c == '' for c in r[5:]) for r in train)
  patient = lambda r: r[0].split('/')[2]
  assert not {patient(r) for r in train} & {patient(r) for r in valid}
  studies = {}
  for r in train:
    studies.setdefault(patient(r), []).append(int(r[0].split('/')[3][5:]))
  assert any(s != sorted(s) for s in studies.values())  # studies out of order
  for r in train + valid:
    with Image.open(tmp_path / r[0]) as image:
      assert image.format == 'JPEG'
