"""Synthetic generator: real layouts and formats; labels follow the drawing."""
import collections
import csv
import glob
import os

import numpy as np
import pydicom
from pydicom import uid as uids
import pytest

from mlvicx_jax.synthetic import phantom
from mlvicx_jax import synthetic


def test_nih_layout_header_and_label_mix(tmp_path):
  synthetic.generate('nih', str(tmp_path), num_images=120, seed=0, image_size=48)
  header = open(tmp_path / 'Data_Entry_2017.csv').readline().rstrip('\n')
  assert header == ('Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,'
                    'Patient Gender,View Position,OriginalImage[Width,Height],'
                    'OriginalImagePixelSpacing[x,y],')
  rows = list(csv.DictReader(open(tmp_path / 'Data_Entry_2017.csv')))
  assert len(rows) == 120 and len(os.listdir(tmp_path / 'images')) == 120
  normal = sum(r['Finding Labels'] == 'No Finding' for r in rows) / len(rows)
  assert 0.3 < normal < 0.6
  assert any('|' in r['Finding Labels'] for r in rows)  # Several labels per image.
  train_val = set(open(tmp_path / 'train_val_list.txt').read().split())
  test = set(open(tmp_path / 'test_list.txt').read().split())
  assert train_val | test == {r['Image Index'] for r in rows} and not train_val & test
  patient = {r['Image Index']: r['Patient ID'] for r in rows}
  assert not {patient[n] for n in train_val} & {patient[n] for n in test}


def test_vinbig_layout_readers_and_dicom_variants(tmp_path):
  synthetic.generate('vinbig', str(tmp_path), num_images=24, seed=1, image_size=48)
  rows = list(csv.DictReader(open(tmp_path / 'train.csv')))
  assert list(rows[0]) == ['image_id', 'class_name', 'class_id', 'rad_id',
                           'x_min', 'y_min', 'x_max', 'y_max']
  readers = collections.defaultdict(set)
  for row in rows:
    readers[row['image_id']].add(row['rad_id'])
    if row['class_id'] == '14':
      assert row['class_name'] == 'No finding' and row['x_min'] == ''
    else:
      assert float(row['x_min']) < float(row['x_max'])
  assert {len(r) for r in readers.values()} == {3}
  photometric = set()
  for image_id in readers:
    ds = pydicom.dcmread(tmp_path / 'train' / f'{image_id}.dicom')
    assert ds.BitsAllocated == 16 and ds.BitsStored in (12, 14, 16)
    photometric.add(str(ds.PhotometricInterpretation))
  assert photometric == {'MONOCHROME1', 'MONOCHROME2'}


def test_rsna_and_siim_layouts(tmp_path):
  synthetic.generate('rsna', str(tmp_path / 'rsna'), num_images=10, seed=2, image_size=48)
  rows = list(csv.DictReader(open(tmp_path / 'rsna' / 'stage_2_train_labels.csv')))
  assert list(rows[0]) == ['patientId', 'x', 'y', 'width', 'height', 'Target']
  ds = pydicom.dcmread(tmp_path / 'rsna' / 'stage_2_train_images' / f'{rows[0]["patientId"]}.dcm')
  assert ds.file_meta.TransferSyntaxUID == uids.JPEGBaseline8Bit
  assert ds.PatientID == rows[0]['patientId']

  synthetic.generate('siim', str(tmp_path / 'siim'), num_images=10, seed=2, image_size=48)
  assert open(tmp_path / 'siim' / 'train-rle.csv').readline() == 'ImageId, EncodedPixels\n'
  files = glob.glob(str(tmp_path / 'siim' / 'dicom-images-train' / '*' / '*' / '*.dcm'))
  assert len(files) == 10
  ds = pydicom.dcmread(files[0])
  assert os.path.basename(files[0]) == f'{ds.SOPInstanceUID}.dcm'
  assert ds.file_meta.TransferSyntaxUID == uids.JPEGBaseline8Bit


def test_cardiomegaly_is_a_wider_heart():
  rng = np.random.default_rng(0)
  for _ in range(5):
    normal = phantom.render(rng, 96, 96, [])
    big = phantom.render(rng, 96, 96, ['cardiomegaly'])
    assert normal.heart_width_px / normal.thorax_width_px < 0.5
    assert big.heart_width_px / big.thorax_width_px > 0.55


@pytest.mark.parametrize('finding', ['nodule', 'mass', 'effusion', 'consolidation'])
def test_dense_findings_brighten_their_footprint(finding):
  """Where the finding is drawn the film is brighter than in the same place without it."""
  brighter = []
  for seed in range(4):
    patient = phantom.sample_patient(np.random.default_rng(100 + seed))
    with_it = phantom.render(np.random.default_rng(seed), 96, 96, [finding], patient=patient)
    area = np.maximum.reduce(with_it.footprints[finding]) > 0.5
    assert area.sum() >= 9  # Visible at 96 px: at least a 3x3 patch.
    without = phantom.render(np.random.default_rng(seed), 96, 96, [], patient=patient)
    brighter.append(with_it.image[area].mean() - without.image[area].mean())
  assert np.mean(brighter) > 0.04


def test_pneumothorax_region_is_darker_than_without():
  darker = []
  for seed in range(4):
    patient = phantom.sample_patient(np.random.default_rng(200 + seed))
    with_it = phantom.render(np.random.default_rng(seed), 96, 96, ['pneumothorax'], patient=patient)
    area = with_it.footprints['pneumothorax'][0] > 0.5
    without = phantom.render(np.random.default_rng(seed), 96, 96, [], patient=patient)
    darker.append(without.image[area].mean() - with_it.image[area].mean())
  assert np.mean(darker) > 0.01


def test_unknown_finding_rejected():
  with pytest.raises(ValueError, match='unknown findings'):
    phantom.render(np.random.default_rng(0), 32, 32, ['broken leg'])
