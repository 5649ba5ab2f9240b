"""NIH ChestX-ray14: 14 findings, official test list, patient-wise validation.

Every image stores `boxes`, float32 (N, 5): x, y, w, h in the stored
image's pixels and the class index into the 14 labels, from
BBox_List_2017.csv (984 boxes on 880 images, 8 findings); (0, 5) for an
image without boxes, and for every image when the download lacks the file
(metadata `num_boxes` is then absent).
"""
from __future__ import annotations

import collections
import csv
import glob
import math
import os

import numpy as np
import tensorflow_datasets as tfds

from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data import splits as splits_lib
from mlvicx_jax.data.builders import base

NIH_CSV = ('Data_Entry_2017.csv', 'Data_Entry_2017_v2020.csv')
NIH_TRAIN_VAL = 'train_val_list.txt'
NIH_TEST = 'test_list.txt'
NIH_BOXES = 'BBox_List_2017.csv'
# The box list's own spellings of Data_Entry_2017.csv's findings.
NIH_BOX_ALIASES = {'Infiltrate': 'Infiltration'}
BOX_FIELDS = ('Image Index', 'Finding Label', 'x', 'y', 'w', 'h')
BOX_COLUMNS = ('x', 'y', 'w', 'h', 'class')


class Nih(base.XrayBuilder):
  """NIH ChestX-ray14: 14 findings, official test list, patient-wise validation."""

  CLASS_NAMES = info_lib.NIH_CLASSES
  DEFAULT_FRACTIONS = {'validation': 0.1, 'test': 0.0}  # Test is the official list.
  BUILDER_CONFIGS = [base.build_config(DEFAULT_FRACTIONS, False)]
  HOMEPAGE = 'https://nihcc.app.box.com/v/ChestXray-NIHCC'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download ChestX-ray14 (NIH box or Kaggle "nih-chest-xrays/data") into
  manual_dir so that it holds Data_Entry_2017.csv, train_val_list.txt,
  test_list.txt and the PNGs under images/ or images_001/images/ ...
  images_012/images/. Optional: BBox_List_2017.csv (boxes are then stored).
  """

  def _extra_features(self):
    # Dynamic (N, 5): bytes encoding reads back through numpy, without TensorFlow.
    return {'boxes': tfds.features.Tensor(shape=(None, len(BOX_COLUMNS)), dtype=np.float32,
                                          encoding=tfds.features.Encoding.BYTES)}

  def _extra_fields(self, record, fields):
    if 'boxes' not in record.extra:  # no box list in the download
      return {'boxes': np.zeros((0, len(BOX_COLUMNS)), np.float32)}
    raw = record.extra['boxes']  # float64 (N, 5) in the source PNG's pixels.
    height, width = fields['original_size']
    size = self.builder_config.image_size
    boxes = raw * np.array([size / width, size / height, size / width, size / height, 1.0])
    metadata, split = self.info.metadata, record.extra['split']
    metadata['num_boxes'][split] += len(boxes)
    metadata['num_box_images'][split] += int(len(boxes) > 0)
    metadata['boxes_finding_not_in_labels'] += int(
        sum(record.label[int(c)] == 0 for c in raw[:, 4]))
    return {'boxes': boxes.astype(np.float32)}

  @classmethod
  def check_manual_dir(cls, manual_dir):
    base.require(manual_dir, *NIH_CSV)
    base.require(manual_dir, NIH_TRAIN_VAL)
    base.require(manual_dir, NIH_TEST)
    if not _nih_image_dirs(manual_dir):
      raise base.MissingInputError(
          f'required folder not found: {os.path.join(manual_dir, "images")} or '
          f'{os.path.join(manual_dir, "images_001", "images")} ...')

  def _sources(self, manual_dir):
    csv_path = base.require(manual_dir, *NIH_CSV)
    rows = base.read_csv(csv_path, ['Image Index', 'Finding Labels', 'Patient ID'])
    index = base.index_files(_nih_image_dirs(manual_dir), ('.png',))
    class_index = {name: i for i, name in enumerate(self.CLASS_NAMES)}
    by_name = {}
    for line, row in enumerate(rows, start=2):
      label = np.zeros(len(self.CLASS_NAMES), np.float32)
      for finding in row['Finding Labels'].split('|'):
        finding = finding.strip()
        if finding == info_lib.NIH_NO_FINDING:
          continue
        if finding not in class_index:
          raise ValueError(f'{csv_path}: line {line}: unknown finding {finding!r} '
                           f'in column "Finding Labels"')
        label[class_index[finding]] = 1.0
      name = row['Image Index']
      by_name[name] = base.SourceRecord(name, index.get(name), label, row['Patient ID'])

    train_val = base.read_list(os.path.join(manual_dir, NIH_TRAIN_VAL))
    test = base.read_list(os.path.join(manual_dir, NIH_TEST))
    overlap = set(train_val) & set(test)
    if overlap:
      raise ValueError(f'{NIH_TRAIN_VAL} and {NIH_TEST} share {len(overlap)} images, '
                       f'e.g. {sorted(overlap)[:3]}')
    for list_name, names in ((NIH_TRAIN_VAL, train_val), (NIH_TEST, test)):
      for name in names:
        if name not in by_name:
          self._skip(name, list_name, f'not in {os.path.basename(csv_path)}')
    train_val = [by_name[n] for n in train_val if n in by_name]
    held_out = splits_lib.assign_groups(
        [r.patient_id for r in train_val],
        {'validation': self.builder_config.validation_fraction},
        self.builder_config.seed)
    self.info.metadata.update(
        split_rule=('test: official test_list.txt; validation: seeded patient-wise '
                    'hold-out of train_val_list.txt (patients ranked by '
                    'sha256(f"{seed}:{patient_id}")); train: the rest'),
        validation_fraction_of_patients=self.builder_config.validation_fraction)
    splits = {
        'train': [r for r in train_val if held_out[r.patient_id] == 'train'],
        'validation': [r for r in train_val if held_out[r.patient_id] == 'validation'],
        'test': [by_name[n] for n in test if n in by_name],
    }
    boxes_path = os.path.join(manual_dir, NIH_BOXES)
    if os.path.isfile(boxes_path):
      self._attach_boxes(boxes_path, os.path.basename(csv_path), by_name, splits)
    return splits

  def _attach_boxes(self, path, csv_name, by_name, splits):
    """Puts each listed image's boxes on its record; rows of images not built are skipped."""
    rows = read_box_list(path, self.CLASS_NAMES)
    split_of = {r.file_name: s for s, records in splits.items() for r in records}
    not_in_download = 0
    for name, boxes in rows.items():
      if name not in by_name:
        where, why = NIH_BOXES, f'image not in {csv_name}'
      elif name not in split_of:
        where, why = NIH_BOXES, f'image in neither {NIH_TRAIN_VAL} nor {NIH_TEST}'
      elif by_name[name].path is None:
        where, why = split_of[name], 'image absent'
      else:
        continue
      for line, _ in boxes:
        self._skip(name, where, f'box row: line {line} of {NIH_BOXES}: {why}')
      not_in_download += len(boxes)
    for split, records in splits.items():
      for record in records:
        record.extra['split'] = split
        record.extra['boxes'] = np.array([b for _, b in rows.get(record.file_name, [])],
                                         np.float64).reshape(-1, len(BOX_COLUMNS))
    self.info.metadata.update(
        box_columns=list(BOX_COLUMNS),
        box_rule=(f'{NIH_BOXES}: x, y, w, h scaled from the pixels of the PNG the row '
                  'names to the stored image (x, w * size / width; y, h * size / height); '
                  'class: index into class_names'),
        num_boxes={s: 0 for s in splits}, num_box_images={s: 0 for s in splits},
        boxes_skipped_not_in_download=not_in_download, boxes_finding_not_in_labels=0)


def read_box_list(path: str, class_names) -> dict[str, list[tuple[int, list[float]]]]:
  """{image: [(line, [x, y, w, h, class]), ...]} of BBox_List_2017.csv, in file order.

  Its header `Image Index,Finding Label,Bbox [x,y,w,h],,,` splits into nine
  columns while every row has six fields, so fields go by position; empty
  fields after the sixth (a re-saved copy) are ignored. A malformed row
  stops the build: a wrong box would silently corrupt the localisation scores.
  """
  class_index = {name: i for i, name in enumerate(class_names)}
  class_index.update({alias: class_index[name] for alias, name in NIH_BOX_ALIASES.items()})
  out = collections.defaultdict(list)
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.reader(f)
    header = [h.strip() for h in next(reader, [])]
    if header[:2] != list(BOX_FIELDS[:2]):
      raise ValueError(f'{path}: line 1: header {header} does not start with '
                       f'{",".join(BOX_FIELDS[:2])!r}')
    for row in reader:
      line = reader.line_num
      fields = [v.strip() for v in row]
      while len(fields) > len(BOX_FIELDS) and not fields[-1]:
        fields.pop()
      if not any(fields):
        continue
      if len(fields) != len(BOX_FIELDS):
        raise ValueError(f'{path}: line {line}: {len(fields)} fields, expected '
                         f'{len(BOX_FIELDS)} ({", ".join(BOX_FIELDS)})')
      name, finding = fields[:2]
      if not name:
        raise ValueError(f'{path}: line {line}: field {BOX_FIELDS[0]!r} is empty')
      if finding not in class_index:
        raise ValueError(f'{path}: line {line}: unknown finding {finding!r}')
      values = []
      for field, text in zip(BOX_FIELDS[2:], fields[2:]):
        try:
          value = float(text)
        except ValueError:
          value = math.nan
        if not math.isfinite(value):
          raise ValueError(f'{path}: line {line}: field {field!r} is {text!r}, not a number')
        if field in ('w', 'h') and value <= 0:
          raise ValueError(f'{path}: line {line}: field {field!r} is {text!r}, must be > 0')
        values.append(value)
      out[name].append((line, values + [float(class_index[finding])]))
  return dict(out)


def _nih_image_dirs(manual_dir: str) -> list[str]:
  dirs = [os.path.join(manual_dir, 'images')]
  dirs += sorted(glob.glob(os.path.join(glob.escape(manual_dir), 'images_*', 'images')))
  return [d for d in dirs if os.path.isdir(d)]
