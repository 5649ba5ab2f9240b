"""PadChest builder: the synthetic release (the real CSV's quirks) and images of known values.

References are computed here from the files themselves: the CSV through
csv.DictReader and ast, the PNGs through PIL and numpy, the split from the
documented sha256 ranking, with the rules of docs/data.md#padchest.
"""
import ast
import collections
import csv
import hashlib
import json
import os

import numpy as np
from PIL import Image
import pytest

from mlvicx_jax.data import builders
from mlvicx_jax.data import prepare as prepare_lib
from mlvicx_jax.data import sources

CSV_NAME = 'PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv'
SIZE = 96  # the fixture's films: stored without resizing, so pixels compare exactly
CLASSES = ['atelectasis', 'cardiomegaly', 'pleural effusion', 'infiltrates', 'mass', 'nodule',
           'pneumonia', 'pneumothorax', 'consolidation', 'pulmonary edema', 'emphysema',
           'pulmonary fibrosis', 'pleural thickening', 'hiatal hernia', 'pulmonary mass',
           'alveolar pattern', 'interstitial pattern', 'heart insufficiency', 'fibrotic band',
           'costophrenic angle blunting', 'aortic elongation', 'fracture']
NOT_FINDINGS = {'normal', 'exclude', 'suboptimal study', 'unchanged'}
PROJECTIONS = {'PA', 'L', 'AP_horizontal', 'AP', 'COSTAL', 'EXCLUDE', 'UNK'}
FRONTAL = {'PA', 'AP', 'AP_horizontal'}
CSV_REASONS = {'excluded projection', 'no labels', 'excluded', 'suboptimal study',
               'unchanged only'}


@pytest.fixture(scope='module')
def raw(padchest_data_dir):
  return os.path.join(os.path.dirname(padchest_data_dir), 'raw_padchest')


def table(root):
  """The CSV's rows as dicts of the cell text."""
  with open(os.path.join(root, CSV_NAME), newline='') as f:
    return list(csv.DictReader(f))


def findings_of(cell):
  """Stripped entries of a Labels cell, None when unlabelled ('', 'nan', no entry)."""
  if cell.strip().lower() in ('', 'nan'):
    return None
  return [e.strip() for e in ast.literal_eval(cell) if e.strip()] or None


def png_values(path):
  """(source values, full scale) of a PNG, or None when it does not decode."""
  try:
    with Image.open(path) as image:
      image.load()
      if image.mode.startswith('I'):
        return np.asarray(image).astype(np.int64), 65535
      return np.asarray(image.convert('L')).astype(np.int64), 255
  except (OSError, ValueError):
    return None


def reference(root, frontal_only=False, physician_only=False):
  """{file name: (reason or None, findings, row)} by the documented rules."""
  out = {}
  for row in table(root):
    if frontal_only and row['Projection'] not in FRONTAL:
      continue
    if physician_only and row['MethodLabel'] != 'Physician':
      continue
    findings = findings_of(row['Labels'])
    path = os.path.join(root, row['ImageDir'], row['ImageID'])
    if row['Projection'] == 'EXCLUDE':
      reason = 'excluded projection'
    elif findings is None:
      reason = 'no labels'
    elif 'exclude' in findings:
      reason = 'excluded'
    elif 'suboptimal study' in findings:
      reason = 'suboptimal study'
    elif set(findings) == {'unchanged'}:
      reason = 'unchanged only'
    elif not os.path.isfile(path):
      reason = 'image listed in the CSV but absent'
    elif png_values(path) is None:
      reason = 'unreadable image'
    else:
      reason = None
    out[f'{row["ImageDir"]}/{row["ImageID"]}'] = (reason, findings, row)
  return out


def reference_split(patients, seed=0, test=0.2, validation=0.1):
  """Patients ranked by sha256(f'{seed}:{id}') (first 8 bytes, big-endian): test first."""
  key = lambda p: (int.from_bytes(hashlib.sha256(f'{seed}:{p}'.encode()).digest()[:8], 'big'), p)
  ranked = sorted(set(patients), key=key)
  n_test = max(1, round(test * len(ranked)))
  n_val = max(1, round(validation * len(ranked)))
  return {p: 'test' if i < n_test else 'validation' if i < n_test + n_val else 'train'
          for i, p in enumerate(ranked)}


def read_build(data_dir, dataset):
  """({file name: record}, {file name: split}) over every split of a build."""
  splits = sources.read_only_builder(data_dir, dataset).info.splits
  records, split_of = {}, {}
  for split in splits:
    source = sources.data_source(data_dir, dataset, split)
    for i in range(len(source)):
      name = source[i]['file_name'].decode()
      records[name], split_of[name] = source[i], split
  return records, split_of


def skipped_of(build_path):
  report = json.loads((build_path / 'skipped.json').read_text())
  return {(s['file_name'], s['reason'].split(':')[0]) for s in report['skipped']}


def test_the_fixture_has_the_release_quirks(raw):
  with open(os.path.join(raw, CSV_NAME), newline='') as f:
    assert next(csv.reader(f))[0] == ''  # the unnamed index column
  rows = table(raw)
  column = lambda name: [row[name] for row in rows]
  assert set(column('Projection')) == PROJECTIONS
  assert set(column('MethodLabel')) == {'Physician', 'RNN_model'}
  assert 'PED' in set(column('Pediatric'))
  assert set(column('BitsStored_DICOM')) == {'10', '12'}
  assert all(float(v) > 0 for v in column('WindowCenter_DICOM') + column('WindowWidth_DICOM'))
  assert set(column('PhotometricInterpretation_DICOM')) == {'MONOCHROME2'}
  labels = column('Labels')
  assert {'', 'nan', "['unchanged']"} <= set(labels)
  entries = [e for cell in labels if findings_of(cell) for e in ast.literal_eval(cell)]
  assert any(e != e.strip() for e in entries)  # leading or trailing spaces
  assert {'exclude', 'suboptimal study', 'normal', 'unchanged'} <= {e.strip() for e in entries}
  studies = collections.defaultdict(set)
  for row in rows:
    studies[row['PatientID']].add(row['StudyID'])
  assert max(map(len, studies.values())) > 1  # several studies per patient
  assert max(collections.Counter(column('StudyID')).values()) > 1  # frontal + lateral
  paths = [os.path.join(raw, row['ImageDir'], row['ImageID']) for row in rows]
  assert sum(not os.path.isfile(p) for p in paths) == 1
  values = [png_values(p) for p in paths if os.path.isfile(p)]
  assert sum(v is None for v in values) == 1  # the truncated PNG
  peaks = {(scale, int(v.max()) > 4095) for v, scale in filter(None, values)}
  assert {(65535, True), (65535, False), (255, False)} <= peaks


def test_records_labels_fields_images_and_split_match_the_files(padchest_data_dir, raw):
  path = prepare_lib.built_path(padchest_data_dir, 'padchest',
                                builders.make_config('padchest', image_size=SIZE))
  metadata = json.loads((path / 'metadata.json').read_text())
  assert metadata['class_names'] == CLASSES
  records, split_of = read_build(padchest_data_dir, 'padchest')
  expected = reference(raw)
  usable = {n for n, (reason, _, _) in expected.items() if reason is None}
  assert set(records) == usable
  assert skipped_of(path) == {(n, r) for n, (r, _, _) in expected.items() if r is not None}
  for name, record in records.items():
    _, findings, row = expected[name]
    np.testing.assert_array_equal(record['label'], [c in findings for c in CLASSES], name)
    assert record['projection'].decode() == row['Projection']
    assert record['method_label'].decode() == row['MethodLabel']
    assert bool(record['pediatric']) == (row['Pediatric'] == 'PED')
    assert record['patient_id'].decode() == row['PatientID']
    assert record['study_id'].decode() == row['StudyID']
    values, scale = png_values(os.path.join(raw, *name.split('/')))
    np.testing.assert_array_equal(record['image'][..., 0],
                                  np.round(values / scale * 255).astype(np.uint8), name)
  normal = [n for n in usable if set(expected[n][1]) <= NOT_FINDINGS]
  assert normal and all(not records[n]['label'].any() for n in normal)
  # Patient-wise: every patient whose rows pass the CSV rules, ranked by the documented hash.
  patients = {n: row['PatientID'] for n, (r, _, row) in expected.items()
              if r not in CSV_REASONS}
  split = reference_split(patients.values())
  assert split_of == {n: split[patients[n]] for n in records}
  assert {'train', 'validation', 'test'} == set(split_of.values())


def test_known_values_map_by_one_rule_for_every_image(tmp_path):
  """16-bit: round(v / 65535 * 255) = round(v / 257); 8-bit kept; never a per-image stretch."""
  root = tmp_path / 'raw'
  root.mkdir()
  levels = np.array([0, 128, 129, 385, 386, 4095, 32896, 65535], np.uint16)
  images = {
      'gradient.png': np.tile(levels, (8, 1)),
      'twelve_bit_flat.png': np.full((8, 8), 4095, np.uint16),  # a stretch would give 0 or 255
      'ten_bit.png': np.tile(np.array([0, 300, 700, 1023], np.uint16), (8, 2)),
      'eight_bit.png': np.arange(64, dtype=np.uint8).reshape(8, 8) * 4,
      'grey_rgb.png': np.repeat((np.arange(64, dtype=np.uint8).reshape(8, 8) * 3)[..., None], 3,
                                -1),
  }
  header = ['', 'ImageID', 'ImageDir', 'StudyID', 'PatientID', 'Projection', 'MethodLabel',
            'Pediatric', 'BitsStored_DICOM', 'Labels']
  rows = []
  for k, (name, pixels) in enumerate(images.items()):
    (root / '0').mkdir(exist_ok=True)
    Image.fromarray(pixels).save(root / '0' / name)
    rows.append([k, name, '0', f's{k}', f'p{k}', 'PA', 'Physician', 'No', '12',
                 "['normal']"])
  rows.append([len(rows)] + rows[0][1:])  # the same image again
  rows.append([len(rows), 'no_entry.png', '0', 's9', 'p9', 'PA', 'Physician', 'No', '12', '[]'])
  with open(root / CSV_NAME, 'w', newline='') as f:
    csv.writer(f).writerows([header] + rows)
  path = prepare_lib.prepare('padchest', str(root), str(tmp_path / 'out'), image_size=8,
                             num_workers=0)
  records, _ = read_build(str(tmp_path / 'out'), 'padchest')
  stored = {n.split('/')[1]: r['image'][..., 0] for n, r in records.items()}
  np.testing.assert_array_equal(stored['gradient.png'][0], [0, 0, 1, 1, 2, 16, 128, 255])
  np.testing.assert_array_equal(stored['twelve_bit_flat.png'], np.full((8, 8), 16))
  np.testing.assert_array_equal(stored['ten_bit.png'][0], np.round(
      np.array([0, 300, 700, 1023, 0, 300, 700, 1023]) / 65535 * 255))
  np.testing.assert_array_equal(stored['eight_bit.png'], images['eight_bit.png'])
  np.testing.assert_array_equal(stored['grey_rgb.png'], images['grey_rgb.png'][..., 0])
  assert skipped_of(path) == {('0/gradient.png', 'duplicate row'),
                               ('0/no_entry.png', 'no labels')}
  peaks = json.loads((path / 'metadata.json').read_text())['png_peaks']
  assert peaks == {'png16_peak_le_16bit': 1, 'png16_peak_le_12bit': 1,
                   'png16_peak_le_10bit': 1, 'png8': 2}


def test_frontal_only_with_the_frequent_findings(raw, tmp_path):
  min_positives = 3
  path = prepare_lib.prepare('padchest', raw, str(tmp_path), image_size=SIZE, num_workers=0,
                             frontal_only=True, min_positives=min_positives)
  assert path.parent.name == f's{SIZE}_frontal_min{min_positives}'
  expected = reference(raw, frontal_only=True)
  counts = collections.Counter(f for r, findings, _ in expected.values()
                               if r not in CSV_REASONS for f in set(findings))
  extra = sorted((f for f, n in counts.items() if n >= min_positives and f not in CLASSES
                  and f not in NOT_FINDINGS), key=lambda f: (-counts[f], f))
  assert extra  # the fixture has frequent findings beyond the stated list
  class_names = list(sources.class_names(str(tmp_path), 'padchest'))
  assert class_names == CLASSES + extra
  records, _ = read_build(str(tmp_path), 'padchest')
  assert set(records) == {n for n, (r, _, _) in expected.items() if r is None}
  assert {r['projection'].decode() for r in records.values()} <= FRONTAL
  for name, record in records.items():
    np.testing.assert_array_equal(record['label'], [c in expected[name][1] for c in class_names])
  assert skipped_of(path) == {(n, r) for n, (r, _, _) in expected.items() if r is not None}


def test_physician_only_build(raw, tmp_path):
  path = prepare_lib.prepare('padchest', raw, str(tmp_path), image_size=SIZE, num_workers=0,
                             physician_only=True)
  assert path.parent.name == f's{SIZE}_physician'
  records, _ = read_build(str(tmp_path), 'padchest')
  expected = reference(raw, physician_only=True)
  assert set(records) == {n for n, (r, _, _) in expected.items() if r is None}
  assert {r['method_label'] for r in records.values()} == {b'Physician'}
  assert skipped_of(path) == {(n, r) for n, (r, _, _) in expected.items() if r is not None}


def test_options_belong_to_their_datasets():
  with pytest.raises(ValueError, match='PadChest option'):
    builders.make_config('nih', physician_only=True)
  with pytest.raises(ValueError, match='PadChest option'):
    builders.make_config('chexpert', min_positives=5)
  with pytest.raises(ValueError, match='CheXpert option'):
    builders.make_config('vinbig', frontal_only=True)
  with pytest.raises(ValueError, match='needs the manual_dir'):
    builders.make_config('padchest', min_positives=5)


def _tiny_release(root, labels_cells, projection='PA'):
  root.mkdir(parents=True)
  with open(root / CSV_NAME, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['', 'ImageID', 'ImageDir', 'StudyID', 'PatientID', 'Projection',
                     'MethodLabel', 'Pediatric', 'Labels'])
    for k, cell in enumerate(labels_cells):
      writer.writerow([k, f'{k}.png', '0', f's{k}', f'p{k}', projection, 'RNN_model', 'No', cell])


def test_bad_input_is_named(tmp_path):
  _tiny_release(tmp_path / 'empty', [])
  os.remove(tmp_path / 'empty' / CSV_NAME)
  with pytest.raises(builders.MissingInputError, match=CSV_NAME):
    prepare_lib.prepare('padchest', str(tmp_path / 'empty'), str(tmp_path / 'out'))
  _tiny_release(tmp_path / 'malformed', ["['normal']", "['pleural effusion', cardiomegaly]"])
  with pytest.raises(ValueError, match=rf'{CSV_NAME}: line 3: column Labels'):
    prepare_lib.prepare('padchest', str(tmp_path / 'malformed'), str(tmp_path / 'out'))
  _tiny_release(tmp_path / 'projection', ["['normal']"], projection='LL')
  with pytest.raises(ValueError, match=r"line 2: column Projection: unknown value 'LL'"):
    prepare_lib.prepare('padchest', str(tmp_path / 'projection'), str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out' / 'padchest')
