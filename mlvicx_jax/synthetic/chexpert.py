"""Synthetic CheXpert in the release layout, with the real CSV's quirks.

  out/CheXpert-v1.0-small/train.csv, valid.csv,
  out/CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg

Quirks of the real files (SPEC section 3): the real header; cells '1.0',
'0.0', '-1.0' (uncertain) and blank (the most common); No Finding only 1.0
or blank; AP/PA blank on laterals and 'LL'/'RL' on a few frontals; Sex
'Unknown' now and then; some rows with every observation blank; several
studies per patient, written out of study order; valid.csv with 0.0/1.0
only and patients of its own. Findings are drawn by `phantom`, so positive
and uncertain labels are visible in the images (uncertain cells mostly
mark a drawn finding); laterals are the film squeezed sideways.
"""
from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image

from mlvicx_jax.data import info as info_lib
from mlvicx_jax.synthetic import phantom

RELEASE = 'CheXpert-v1.0-small'
HEADER = ('Path', 'Sex', 'Age', 'Frontal/Lateral', 'AP/PA') + info_lib.CHEXPERT_CLASSES
# Observation -> phantom finding (None: not drawable; its labels are noise).
TO_PHANTOM = {
    'Enlarged Cardiomediastinum': 'aortic_enlargement', 'Cardiomegaly': 'cardiomegaly',
    'Lung Opacity': 'lung_opacity', 'Lung Lesion': 'nodule', 'Edema': 'edema',
    'Consolidation': 'consolidation', 'Pneumonia': 'pneumonia', 'Atelectasis': 'atelectasis',
    'Pneumothorax': 'pneumothorax', 'Pleural Effusion': 'effusion',
    'Pleural Other': 'pleural_thickening', 'Fracture': 'calcification', 'Support Devices': None}
WEIGHTS = {'Enlarged Cardiomediastinum': 0.6, 'Cardiomegaly': 1.2, 'Lung Opacity': 1.4,
           'Lung Lesion': 0.6, 'Edema': 1.2, 'Consolidation': 0.8, 'Pneumonia': 0.6,
           'Atelectasis': 1.2, 'Pneumothorax': 0.7, 'Pleural Effusion': 1.5,
           'Pleural Other': 0.4, 'Fracture': 0.4, 'Support Devices': 1.0}
VALID_FRACTION = 0.25  # of the images; CheXpert's is far smaller, but a test split needs some.


def _findings(rng) -> list[str]:
  if rng.random() < 0.35:
    return []
  names = list(WEIGHTS)
  p = np.array([WEIGHTS[n] for n in names])
  count = 1 + rng.binomial(3, 0.25)
  return [names[i] for i in rng.choice(len(names), count, replace=False, p=p / p.sum())]


def _cells(rng, drawn: list[str], valid: bool) -> dict[str, str]:
  """One study's observation cells as the labeller writes them."""
  cells = {}
  for name in info_lib.CHEXPERT_CLASSES[1:]:
    if name in drawn:
      cells[name] = '1.0' if valid or rng.random() < 0.75 else '-1.0'
    elif valid:
      cells[name] = '0.0'
    else:
      cells[name] = str(rng.choice(['', '0.0', '-1.0'], p=[0.82, 0.14, 0.04]))
  positive = any(v == '1.0' for v in cells.values())
  cells['No Finding'] = ('0.0' if positive else '1.0') if valid else (
      '' if positive or rng.random() < 0.1 else '1.0')
  if not valid and rng.random() < 0.03:  # every observation blank
    cells = {name: '' for name in cells}
  return cells


def _film(rng, size: int, drawn: list[str], patient, lateral: bool) -> np.ndarray:
  findings = sorted({TO_PHANTOM[n] for n in drawn if TO_PHANTOM[n]})
  image = phantom.render(rng, size, size, findings, patient=patient).image
  pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
  if lateral:  # a different-looking view of the same chest
    squeezed = np.asarray(Image.fromarray(pixels).resize((size * 2 // 3, size)))
    pixels = np.zeros_like(pixels)
    start = (size - squeezed.shape[1]) // 2
    pixels[:, start:start + squeezed.shape[1]] = squeezed
  return pixels


def generate(rng: np.random.Generator, out: str, num_images: int, size: int) -> dict:
  """Writes about num_images images (whole studies) and the two CSVs; returns counts."""
  root = os.path.join(out, RELEASE)
  rows = {'train': [], 'valid': []}
  patient_number = 0
  count = 0
  while count < num_images:
    patient_number += 1
    late = count >= (1 - VALID_FRACTION) * num_images and not rows['valid']
    split = 'valid' if count > 0 and (late or rng.random() < VALID_FRACTION) else 'train'
    patient = phantom.sample_patient(rng)
    sex = str(rng.choice(['Male', 'Female', 'Unknown'], p=[0.5, 0.47, 0.03]))
    age = int(rng.integers(18, 91))
    studies = []
    for study in range(1, 1 + (1 if split == 'valid' else int(rng.choice([1, 2, 3])))):
      drawn = _findings(rng)
      cells = _cells(rng, drawn, split == 'valid')
      views = ['frontal'] + (['lateral'] if rng.random() < 0.35 else [])
      for number, view in enumerate(views, start=1):
        if count >= num_images:
          break
        path = f'{RELEASE}/{split}/patient{patient_number:05d}/study{study}/view{number}_{view}.jpg'
        os.makedirs(os.path.dirname(os.path.join(out, path)), exist_ok=True)
        Image.fromarray(_film(rng, size, drawn, patient, view == 'lateral')).save(
            os.path.join(out, path), format='JPEG', quality=90)
        ap_pa = '' if view == 'lateral' else str(
            rng.choice(['AP', 'PA', 'LL', 'RL'], p=[0.7, 0.24, 0.03, 0.03]))
        studies.append([path, sex, age + study // 2, view.capitalize(), ap_pa] +
                       [cells[n] for n in info_lib.CHEXPERT_CLASSES])
        count += 1
    order = rng.permutation(len(studies))  # studies of a patient are not in order
    rows[split] += [studies[i] for i in order]
  for split, split_rows in rows.items():
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f'{split}.csv'), 'w', newline='') as f:
      writer = csv.writer(f, lineterminator='\n')
      writer.writerow(HEADER)
      writer.writerows(split_rows)
  return {'num_images': count, 'num_patients': patient_number,
          'num_train': len(rows['train']), 'num_valid': len(rows['valid'])}
