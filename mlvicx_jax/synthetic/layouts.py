"""The per-dataset writers: labels, boxes and masks derived from what `phantom` drew."""
from __future__ import annotations

import csv
import os
import uuid

import numpy as np
import tqdm

from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data import rle as rle_lib
from mlvicx_jax.synthetic import phantom
from mlvicx_jax.synthetic.files import new_uid, save_png, to_uint8, write_csv, write_dicom

# Relative frequencies of findings among abnormal images: common classes more
# often, but every class frequent enough to be learnable from ~1k images.
NIH_WEIGHTS = {
    'Atelectasis': 1.3, 'Cardiomegaly': 1.2, 'Effusion': 1.5, 'Infiltration': 1.5,
    'Mass': 0.9, 'Nodule': 1.1, 'Pneumonia': 0.6, 'Pneumothorax': 1.0,
    'Consolidation': 0.9, 'Edema': 0.7, 'Emphysema': 0.8, 'Fibrosis': 0.7,
    'Pleural_Thickening': 0.8, 'Hernia': 0.5}
NIH_TO_PHANTOM = {name: name.lower() for name in info_lib.NIH_CLASSES}
# The 8 findings of BBox_List_2017.csv, in its spelling ('Infiltrate').
NIH_BOX_FINDINGS = {
    'Atelectasis': 'Atelectasis', 'Cardiomegaly': 'Cardiomegaly', 'Effusion': 'Effusion',
    'Infiltration': 'Infiltrate', 'Mass': 'Mass', 'Nodule': 'Nodule',
    'Pneumonia': 'Pneumonia', 'Pneumothorax': 'Pneumothorax'}
# The real header: 'Bbox [x,y,w,h]' split by the CSV commas, three empty columns.
NIH_BOX_HEADER = 'Image Index,Finding Label,Bbox [x,y,w,h],,,'
NIH_CHRONIC = ('Cardiomegaly', 'Emphysema', 'Fibrosis', 'Pleural_Thickening',
               'Nodule', 'Mass', 'Hernia')

VINBIG_WEIGHTS = {
    'Aortic enlargement': 1.4, 'Atelectasis': 0.7, 'Calcification': 0.8,
    'Cardiomegaly': 1.3, 'Consolidation': 0.7, 'ILD': 0.7, 'Infiltration': 0.8,
    'Lung Opacity': 1.1, 'Nodule/Mass': 1.0, 'Other lesion': 0.8,
    'Pleural effusion': 1.0, 'Pleural thickening': 1.2, 'Pneumothorax': 0.5,
    'Pulmonary fibrosis': 1.1}
VINBIG_TO_PHANTOM = {
    'Aortic enlargement': 'aortic_enlargement', 'Atelectasis': 'atelectasis',
    'Calcification': 'calcification', 'Cardiomegaly': 'cardiomegaly',
    'Consolidation': 'consolidation', 'ILD': 'ild', 'Infiltration': 'infiltration',
    'Lung Opacity': 'lung_opacity', 'Nodule/Mass': None,  # nodule or mass.
    'Other lesion': 'other_lesion', 'Pleural effusion': 'effusion',
    'Pleural thickening': 'pleural_thickening', 'Pneumothorax': 'pneumothorax',
    'Pulmonary fibrosis': 'fibrosis'}
VINBIG_READERS = tuple(f'R{i}' for i in range(1, 18))
VINBIG_DETECTION = 0.85  # Chance that a reader marks a drawn finding.
VINBIG_FALSE_MARK = 0.03  # Chance that a reader marks one finding not drawn.

# Findings seen on negatives of the binary datasets ("not normal, no opacity").
OTHER_FINDINGS = ('nodule', 'effusion', 'cardiomegaly', 'atelectasis',
                  'pleural_thickening', 'emphysema', 'mass')

NORMAL_FRACTION = 0.45
# Before chronic findings carry over to follow-ups; ends near 45% 'No Finding'.
NIH_NORMAL_FRACTION = 0.49
POSITIVE_FRACTION = {'rsna': 0.35, 'siim': 0.4}


def _sample_findings(rng, weights: dict[str, float],
                     normal_fraction: float = NORMAL_FRACTION) -> list[str]:
  """Label names of one image: none with `normal_fraction`, else 1-4 weighted."""
  if rng.random() < normal_fraction:
    return []
  names = list(weights)
  p = np.array([weights[n] for n in names])
  count = 1 + rng.binomial(3, 0.22)
  return [names[i] for i in rng.choice(len(names), count, replace=False, p=p / p.sum())]


def _nih_cooccur(rng, labels: list[str]) -> list[str]:
  """Edema comes with a big heart and effusions more often than not."""
  labels = set(labels)
  if 'Edema' in labels:
    if rng.random() < 0.5:
      labels.add('Cardiomegaly')
    if rng.random() < 0.4:
      labels.add('Effusion')
  if 'Cardiomegaly' in labels and rng.random() < 0.25:
    labels.add('Effusion')
  return sorted(labels)


def _vinbig_encoding(rng, image: np.ndarray) -> dict:
  """Stores a [0, 1] film as VinBig-like 16-bit pixels plus display tags.

  Every variant displays as the film again through images.dicom_to_unit.
  """
  bits = int(rng.choice([12, 14, 16]))
  mode = rng.choice(['window', 'plain', 'rescale', 'voi_lut'], p=[0.4, 0.25, 0.2, 0.15])
  if mode == 'voi_lut':
    bits = 12
  top = 2 ** bits - 1
  low = rng.uniform(0.02, 0.3) * top
  high = min(top, low + rng.uniform(0.4, 0.65) * top)
  stored = low + image * (high - low)
  monochrome1 = rng.random() < 0.5
  if monochrome1:  # Dense is dark in the stored values: mirror the range.
    stored = low + high - stored
  out = {'pixels': np.round(stored).astype(np.uint16), 'bits_stored': bits,
         'photometric': 'MONOCHROME1' if monochrome1 else 'MONOCHROME2'}
  centre, width = (low + high) / 2, high - low
  if mode == 'window':
    out['window'] = (centre, width)
  elif mode == 'rescale':
    slope, intercept = float(rng.choice([1.0, 2.0])), -1024.0
    out['rescale'] = (slope, intercept)
    out['window'] = (slope * centre + intercept, slope * width)
  elif mode == 'voi_lut':
    entries = np.arange(top + 1)
    lut = np.clip((entries - low) / (high - low), 0, 1) * 4095
    out['voi_lut'] = (0, np.round(lut).astype(np.uint16), 12)
  return out


# ----------------------------------------------------------------------------
# Datasets.


def write_nih(rng, out: str, num_images: int, size: int, layout: str):
  rows, names_by_patient, boxes = [], {}, {}
  patient_id = 0
  with tqdm.tqdm(total=num_images, desc='nih', unit='img') as progress:
    while len(rows) < num_images:
      patient_id += 1
      patient = phantom.sample_patient(rng)
      age, sex = int(rng.integers(18, 90)), 'F' if patient.female else 'M'
      previous: list[str] = []
      follow_ups = int(rng.choice([1, 2, 3, 4], p=[0.5, 0.25, 0.15, 0.1]))
      for follow_up in range(min(follow_ups, num_images - len(rows))):
        labels = _sample_findings(rng, NIH_WEIGHTS, NIH_NORMAL_FRACTION)
        labels += [f for f in previous if f in NIH_CHRONIC and rng.random() < 0.5]
        labels = _nih_cooccur(rng, labels)
        view = 'AP' if rng.random() < 0.3 else 'PA'
        film = phantom.render(rng, size, size, [NIH_TO_PHANTOM[f] for f in labels],
                              patient=patient, view=view)
        name = f'{patient_id:08d}_{follow_up:03d}.png'
        rows.append({'Image Index': name,
                     'Finding Labels': '|'.join(labels) or info_lib.NIH_NO_FINDING,
                     'Follow-up #': follow_up, 'Patient ID': patient_id,
                     'Patient Age': age + follow_up // 2, 'Patient Gender': sex,
                     'View Position': view})
        # Real layout: images/, or 12 Kaggle folders images_001/images/ ...
        folder = (os.path.join(out, 'images') if layout == 'images' else os.path.join(
            out, f'images_{(len(rows) - 1) * 12 // num_images + 1:03d}', 'images'))
        os.makedirs(folder, exist_ok=True)
        save_png(os.path.join(folder, name), to_uint8(film.image),
                  rgba=rng.random() < 0.03)
        names_by_patient.setdefault(patient_id, []).append(name)
        # Boxes of every drawn instance (no draws from rng); written for test images.
        boxes[name] = [(NIH_BOX_FINDINGS[f], box) for f in labels if f in NIH_BOX_FINDINGS
                       for box in map(phantom.box_of, film.footprints[NIH_TO_PHANTOM[f]])
                       if box is not None]
        previous = labels
        progress.update(1)

  with open(os.path.join(out, 'Data_Entry_2017.csv'), 'w', newline='') as f:
    # The real header: brackets split by the CSV commas, and a trailing comma.
    f.write('Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,'
            'Patient Gender,View Position,OriginalImage[Width,Height],'
            'OriginalImagePixelSpacing[x,y],\n')
    writer = csv.writer(f, lineterminator='\n')
    for row in rows:
      writer.writerow([row['Image Index'], row['Finding Labels'], row['Follow-up #'],
                       row['Patient ID'], row['Patient Age'], row['Patient Gender'],
                       row['View Position'], size, size, 0.143, 0.143, ''])
  # Official split: patient-disjoint, ~22% of patients in the test list.
  patients = sorted(names_by_patient)
  test_patients = set(rng.choice(patients, max(1, round(0.22 * len(patients))),
                                 replace=False).tolist()) if len(patients) > 1 else set()
  for file_name, chosen in (('train_val_list.txt', False), ('test_list.txt', True)):
    names = sorted(n for p in patients if (p in test_patients) == chosen
                   for n in names_by_patient[p])
    with open(os.path.join(out, file_name), 'w') as f:
      f.write(''.join(n + '\n' for n in names))
    if chosen:  # As in the real set, only test images have boxes.
      box_rows = _write_nih_boxes(out, {n: boxes[n] for n in names})
  return {'num_images': len(rows), 'num_patients': len(patients),
          'num_no_finding': sum(r['Finding Labels'] == info_lib.NIH_NO_FINDING for r in rows),
          'num_boxes': len(box_rows),
          'num_box_images': len({r[0] for r in box_rows})}


def _write_nih_boxes(out: str, boxes: dict[str, list]) -> list[list]:
  """BBox_List_2017.csv: one row (image, finding, x, y, w, h) per drawn instance.

  Coordinates are floats in the PNG's pixels; rows go by finding, then image,
  as in the real file, so one image's boxes are not adjacent.
  """
  rows = sorted(([name, finding, x0, y0, x1 - x0, y1 - y0]
                 for name, image_boxes in boxes.items()
                 for finding, (x0, y0, x1, y1) in image_boxes), key=lambda r: (r[1], r[0]))
  with open(os.path.join(out, 'BBox_List_2017.csv'), 'w', newline='') as f:
    f.write(NIH_BOX_HEADER + '\n')
    writer = csv.writer(f, lineterminator='\n')
    writer.writerows([name, finding, *(f'{v:.6f}' for v in box)]
                     for name, finding, *box in rows)
  return rows


def write_vinbig(rng, out: str, num_images: int, size: int):
  class_id = {name: i for i, name in enumerate(info_lib.VINBIG_CLASSES)}
  os.makedirs(os.path.join(out, 'train'), exist_ok=True)
  rows, normal = [], 0
  for _ in tqdm.trange(num_images, desc='vinbig', unit='img'):
    image_id = rng.bytes(16).hex()
    labels = _sample_findings(rng, VINBIG_WEIGHTS)
    kinds = {}
    for label in labels:
      kind = VINBIG_TO_PHANTOM[label]
      kinds[label] = kind or ('mass' if rng.random() < 0.35 else 'nodule')
    height = int(round(size * rng.uniform(1.0, 1.2)))  # Portrait films.
    film = phantom.render(rng, height, size, sorted(kinds.values()))
    encoded = _vinbig_encoding(rng, film.image)
    write_dicom(os.path.join(out, 'train', f'{image_id}.dicom'), encoded.pop('pixels'),
                patient_id='', study_uid=new_uid(rng), series_uid=new_uid(rng),
                sop_uid=new_uid(rng), **encoded)
    readers = rng.choice(VINBIG_READERS, 3, replace=False)
    normal += not labels
    for reader in readers:
      marks = []
      for label, kind in kinds.items():
        for footprint in film.footprints[kind]:
          box = phantom.box_of(footprint)
          if box is not None and rng.random() < VINBIG_DETECTION:
            marks.append((label, _jitter_box(rng, box, size, height)))
      if rng.random() < VINBIG_FALSE_MARK:
        label = str(rng.choice([c for c in info_lib.VINBIG_CLASSES if c not in kinds]))
        x0, y0 = rng.uniform(0.2, 0.6) * size, rng.uniform(0.2, 0.6) * height
        marks.append((label, (x0, y0, x0 + 0.15 * size, y0 + 0.15 * height)))
      if not marks:
        rows.append([image_id, info_lib.VINBIG_NO_FINDING, info_lib.VINBIG_NO_FINDING_ID,
                     reader, '', '', '', ''])
      for label, box in marks:
        rows.append([image_id, label, class_id[label], reader,
                     *(f'{v:.1f}' for v in box)])
  with open(os.path.join(out, 'train.csv'), 'w', newline='') as f:
    writer = csv.writer(f, lineterminator='\n')
    writer.writerow(['image_id', 'class_name', 'class_id', 'rad_id',
                     'x_min', 'y_min', 'x_max', 'y_max'])
    writer.writerows(rows)
  return {'num_images': num_images, 'num_no_finding_drawn': normal}


def _jitter_box(rng, box, width, height):
  x0, y0, x1, y1 = box
  jitter = rng.normal(0, 0.015, 4) * np.array([width, height, width, height])
  x0, y0, x1, y1 = np.array([x0, y0, x1, y1]) + jitter
  return (max(0.0, x0), max(0.0, y0), min(float(width), max(x1, x0 + 1)),
          min(float(height), max(y1, y0 + 1)))


def write_rsna(rng, out: str, num_images: int, size: int):
  folder = os.path.join(out, 'stage_2_train_images')
  os.makedirs(folder, exist_ok=True)
  labels_rows, class_rows, positives = [], [], 0
  for _ in tqdm.trange(num_images, desc='rsna', unit='img'):
    patient_id = str(uuid.UUID(bytes=rng.bytes(16)))
    positive = rng.random() < POSITIVE_FRACTION['rsna']
    findings = ['pneumonia'] if positive else _other_findings(rng)
    film = phantom.render(rng, size, size, findings)
    write_dicom(os.path.join(folder, f'{patient_id}.dcm'), to_uint8(film.image),
                patient_id=patient_id, study_uid=new_uid(rng), series_uid=new_uid(rng),
                sop_uid=new_uid(rng), jpeg=True)
    if positive:
      positives += 1
      for footprint in film.footprints['pneumonia']:
        box = phantom.box_of(footprint)
        if box is not None:
          x0, y0, x1, y1 = box
          labels_rows.append([patient_id, x0, y0, x1 - x0, y1 - y0, 1])
      class_rows.append([patient_id, 'Lung Opacity'])
    else:
      labels_rows.append([patient_id, '', '', '', '', 0])
      class_rows.append([patient_id, 'No Lung Opacity / Not Normal' if findings else 'Normal'])
  write_csv(os.path.join(out, 'stage_2_train_labels.csv'),
             ['patientId', 'x', 'y', 'width', 'height', 'Target'], labels_rows)
  write_csv(os.path.join(out, 'stage_2_detailed_class_info.csv'),
             ['patientId', 'class'], class_rows)
  return {'num_images': num_images, 'num_positive': positives}


def write_siim(rng, out: str, num_images: int, size: int):
  rows, positives = [], 0
  for _ in tqdm.trange(num_images, desc='siim', unit='img'):
    study, series, image_id = new_uid(rng), new_uid(rng), new_uid(rng)
    positive = rng.random() < POSITIVE_FRACTION['siim']
    findings = ['pneumothorax'] if positive else _other_findings(rng, 0.25)
    film = phantom.render(rng, size, size, findings)
    folder = os.path.join(out, 'dicom-images-train', study, series)
    os.makedirs(folder, exist_ok=True)
    write_dicom(os.path.join(folder, f'{image_id}.dcm'), to_uint8(film.image),
                patient_id=str(uuid.UUID(bytes=rng.bytes(16))), study_uid=study,
                series_uid=series, sop_uid=image_id, jpeg=True)
    masks = [f > 0.5 for f in film.footprints.get('pneumothorax', [])]
    masks = [m for m in masks if m.any()]
    if not masks:
      rows.append([image_id, ' -1'])
      continue
    positives += 1
    for mask in masks:
      if rng.random() < 0.25:  # Some regions come as two rows: unioned on read.
        cut = int(np.flatnonzero(mask.any(axis=1)).mean())
        upper, lower = mask.copy(), mask.copy()
        upper[cut:], lower[:cut] = False, False
        parts = [p for p in (upper, lower) if p.any()]
      else:
        parts = [mask]
      rows.extend([image_id, ' ' + rle_lib.rle_encode(p)] for p in parts)
  write_csv(os.path.join(out, 'train-rle.csv'), ['ImageId', ' EncodedPixels'], rows)
  return {'num_images': num_images, 'num_positive': positives}


def _other_findings(rng, probability: float = 0.45) -> list[str]:
  if rng.random() >= probability:
    return []
  count = 1 + int(rng.random() < 0.3)
  return sorted(rng.choice(OTHER_FINDINGS, count, replace=False).tolist())
