"""Synthetic PadChest in the release layout, with the real CSV's quirks.

  out/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv
  out/<ImageDir>/<ImageID>   (16-bit grey PNGs; ImageDir 0, 1, ... as the release's zips)

The CSV starts with an unnamed index column; `Labels` is a Python list
literal of the study's findings (shared by its frontal and lateral image),
entries now and then with leading or trailing spaces; `normal` for a study
without findings, `unchanged` added now and then. Every Projection value
(PA, L, AP_horizontal, AP, COSTAL, EXCLUDE, UNK), both MethodLabel values
(Physician about a quarter of the studies, as in the release), Pediatric PED
for some rows, BitsStored_DICOM 12 or 10 with per-row window centre and
width (of the original DICOM, in its units), MONOCHROME2 throughout; several
studies per patient. Most PNGs spread the film over the 16-bit range, some
hold 12-bit values (at most 4095) and a few are 8-bit, so the build's fixed
mapping shows. With at least 40 images, one row each is forced to carry a
quirk: Labels empty, `nan`, `['exclude']`, `suboptimal study`, only
`unchanged`, spaced entries; Projection COSTAL, EXCLUDE, UNK; an absent
image, a truncated image; an 8-bit and a 12-bit PNG; PED; each MethodLabel.
Findings are drawn by `phantom` and mapped onto PadChest's names.
"""
from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image

from mlvicx_jax.data.builders import padchest as padchest_builder
from mlvicx_jax.synthetic import phantom
from mlvicx_jax.synthetic.files import save_png, to_uint8

HEADER = ('', 'ImageID', 'ImageDir', 'StudyDate_DICOM', 'StudyID', 'PatientID', 'PatientBirth',
          'PatientSex_DICOM', 'ViewPosition_DICOM', 'Projection', 'MethodProjection',
          'Pediatric', 'Modality_DICOM', 'PhotometricInterpretation_DICOM',
          'BitsStored_DICOM', 'WindowCenter_DICOM', 'WindowWidth_DICOM', 'Rows_DICOM',
          'Columns_DICOM', 'ReportID', 'Report', 'MethodLabel', 'Labels', 'Localizations')
# PadChest label -> phantom findings drawn for it (empty: not drawable, a noise label).
TO_PHANTOM = {
    'atelectasis': ('atelectasis',), 'cardiomegaly': ('cardiomegaly',),
    'pleural effusion': ('effusion',), 'infiltrates': ('infiltration',), 'mass': ('mass',),
    'nodule': ('nodule',), 'pneumonia': ('pneumonia',), 'pneumothorax': ('pneumothorax',),
    'consolidation': ('consolidation',), 'pulmonary edema': ('edema',),
    'emphysema': ('emphysema',), 'pulmonary fibrosis': ('fibrosis',),
    'pleural thickening': ('pleural_thickening',), 'hiatal hernia': ('hernia',),
    'pulmonary mass': ('mass',), 'alveolar pattern': ('lung_opacity',),
    'interstitial pattern': ('ild',), 'heart insufficiency': ('cardiomegaly', 'edema'),
    'fibrotic band': (), 'costophrenic angle blunting': ('effusion',),
    'aortic elongation': ('aortic_enlargement',), 'fracture': ('other_lesion',),
    # Beyond the stated classes (min_positives builds find them); real spellings.
    'calcified granuloma': ('calcification',), 'scoliosis': (), 'COPD signs': (),
    'chronic changes': (),
}
WEIGHTS = {name: 1.0 for name in TO_PHANTOM}
WEIGHTS.update({'pleural effusion': 1.6, 'cardiomegaly': 1.4, 'infiltrates': 1.3,
                'chronic changes': 1.5, 'aortic elongation': 1.3, 'scoliosis': 1.2,
                'hiatal hernia': 0.6, 'pulmonary mass': 0.5, 'heart insufficiency': 0.6})
# Labels a finding implies in the report (what is drawn for it is named too).
IMPLIES = {'heart insufficiency': ('cardiomegaly', 'pulmonary edema')}
NORMAL_FRACTION = 0.4
PHYSICIAN_FRACTION = 0.24  # 39,053 of 160,861 rows in the release
QUIRKS = ('labels_empty', 'labels_nan', 'exclude', 'suboptimal', 'unchanged_only', 'spaces',
          'costal', 'exclude_projection', 'unk', 'missing', 'truncated', 'png8', 'png12',
          'pediatric', 'physician', 'rnn')
IMAGES_PER_DIR = 50


def _digits(rng, count: int) -> str:
  return str(rng.integers(1, 10)) + ''.join(map(str, rng.integers(0, 10, count - 1)))


def _findings(rng) -> list[str]:
  """One study's findings: none with NORMAL_FRACTION, else 1-4 weighted, implications added."""
  if rng.random() < NORMAL_FRACTION:
    return []
  names = list(WEIGHTS)
  p = np.array([WEIGHTS[n] for n in names])
  chosen = [names[i] for i in rng.choice(len(names), 1 + rng.binomial(3, 0.25), replace=False,
                                         p=p / p.sum())]
  for name in list(chosen):
    chosen += [n for n in IMPLIES.get(name, ()) if n not in chosen]
  return chosen


def _labels_cell(rng, entries: list[str], spaced: bool = False) -> str:
  """The list literal as the release writes it, spaces around some entries."""
  out = []
  for i, entry in enumerate(entries):
    lead = spaced or (i > 0 and rng.random() < 0.4)
    trail = (spaced and i == len(entries) - 1) or rng.random() < 0.05
    out.append((' ' if lead else '') + entry + (' ' if trail else ''))
  return repr(out)


def _stored(rng, film: np.ndarray, kind: str) -> np.ndarray:
  """The film as PNG pixels: 'full' 16-bit range, 'png12' values <= 4095, or 'png8'."""
  if kind == 'png8':
    return to_uint8(film)
  top = 4095 if kind == 'png12' else 65535
  low, high = rng.uniform(0.0, 0.08) * top, rng.uniform(0.9, 1.0) * top
  return np.round(low + np.clip(film, 0, 1) * (high - low)).astype(np.uint16)


def _film(rng, size: int, drawn: list[str], patient, view: str) -> np.ndarray:
  findings = sorted({f for name in drawn for f in TO_PHANTOM[name]})
  image = phantom.render(rng, size, size, findings, patient=patient,
                         view='AP' if view.startswith('AP') else 'PA').image
  if view == 'L':  # a different-looking view of the same chest
    squeezed = np.asarray(Image.fromarray(image).resize((size * 2 // 3, size)))
    image = np.zeros_like(image)
    start = (size - squeezed.shape[1]) // 2
    image[:, start:start + squeezed.shape[1]] = squeezed
  return image


def _row(rng, index, image_id, image_dir, study, view, labels_cell, quirk, size):
  """One CSV row (HEADER order)."""
  bits = 10 if rng.random() < 0.15 else 12
  top = 2 ** bits - 1
  centre, width = rng.uniform(0.4, 0.6) * top, rng.uniform(0.7, 1.0) * top
  projection = {'costal': 'COSTAL', 'exclude_projection': 'EXCLUDE', 'unk': 'UNK'}.get(
      quirk, view)
  method = {'physician': 'Physician', 'rnn': 'RNN_model'}.get(quirk, study['method'])
  return [index, image_id, image_dir, study['date'], study['id'], study['patient_id'],
          study['birth'], study['sex'], 'LATERAL' if view == 'L' else view.split('_')[0],
          projection, 'Manual review of DICOM fields', 'PED' if quirk == 'pediatric' else
          study['pediatric'], 'CR', 'MONOCHROME2', bits, f'{centre:.0f}', f'{width:.0f}', size,
          size, study['report_id'], study['report'], method, labels_cell,
          "['loc basal']" if study['findings'] else '[]']


def generate(rng: np.random.Generator, out: str, num_images: int, size: int) -> dict:
  """Writes num_images rows (and their PNGs, but for the absent one) and the CSV."""
  quirk_of = {}
  if num_images >= 40:
    quirk_of = dict(zip(rng.choice(num_images, len(QUIRKS), replace=False).tolist(), QUIRKS))
  rows, count, patients, studies = [], 0, 0, 0
  while count < num_images:
    patients += 1
    patient = phantom.sample_patient(rng)
    patient_id, birth = _digits(rng, 32), f'{rng.integers(1925, 2000)}.0'
    sex, pediatric = str(rng.choice(['M', 'F'])), 'No'
    for _ in range(2 if patients == 1 else int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))):
      studies += 1
      findings = _findings(rng)
      entries = (findings or ['normal']) + (['unchanged'] if rng.random() < 0.1 else [])
      study = {'id': _digits(rng, 32), 'patient_id': patient_id, 'birth': birth, 'sex': sex,
               'pediatric': pediatric, 'findings': findings, 'report_id': _digits(rng, 7),
               'date': f'{rng.integers(2009, 2018)}{rng.integers(1, 13):02d}'
                       f'{rng.integers(1, 29):02d}',
               'method': 'Physician' if rng.random() < PHYSICIAN_FRACTION else 'RNN_model',
               'report': ' '.join(findings) + ', sin cambios .' if findings else 'normal .'}
      frontal = str(rng.choice(['PA', 'AP_horizontal', 'AP'], p=[0.75, 0.18, 0.07]))
      views = [frontal] + (['L'] if frontal == 'PA' and rng.random() < 0.55 else [])
      for view in views[:num_images - count]:
        quirk = quirk_of.get(count)
        cell = {'labels_empty': '', 'labels_nan': 'nan', 'exclude': "['exclude']",
                'suboptimal': repr(['suboptimal study'] + findings),
                'unchanged_only': "['unchanged']"}.get(quirk)
        if cell is None:
          cell = _labels_cell(rng, entries, spaced=quirk == 'spaces')
        image_dir = str(count // IMAGES_PER_DIR)
        image_id = (f'{_digits(rng, 44)}_{rng.integers(0, 5):02d}-{rng.integers(0, 200):03d}'
                    f'-{rng.integers(0, 200):03d}.png')
        rows.append(_row(rng, count, image_id, image_dir, study, view, cell, quirk, size))
        film = _film(rng, size, findings, patient, view)
        kind = quirk if quirk in ('png8', 'png12') else str(
            rng.choice(['full', 'png12', 'png8'], p=[0.75, 0.18, 0.07]))
        if quirk != 'missing':
          path = os.path.join(out, image_dir, image_id)
          os.makedirs(os.path.dirname(path), exist_ok=True)
          save_png(path, _stored(rng, film, kind))
          if quirk == 'truncated':
            with open(path, 'r+b') as f:
              f.truncate(os.path.getsize(path) // 2)
        count += 1
  with open(os.path.join(out, padchest_builder.CSV_NAME), 'w', newline='') as f:
    writer = csv.writer(f, lineterminator='\n')
    writer.writerow(HEADER)
    writer.writerows(rows)
  return {'num_images': count, 'num_patients': patients, 'num_studies': studies,
          'quirks': sorted(quirk_of.values())}
