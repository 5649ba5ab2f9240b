"""Any folder of radiographs: every PNG, JPEG and DICOM under a tree.

For unlabelled pretraining on images that come with no CSV, and, with a
labels CSV, for evaluation. The tree is walked recursively in sorted order;
each image's id (`file_name`) is its path relative to manual_dir with '/'
separators, so two `1.png` in different folders stay distinct. DICOMs go
through the display pipeline of images.py (VOI LUT or window, MONOCHROME1
inversion), 16-bit PNGs are stretched over each image's own range (they
carry no window), colour images are converted to luma (PIL 'L').

Skipped and listed in skipped.json: every other file ('not an image', split
''), unreadable or truncated images, CSV rows naming no image, and (with a
labels CSV) images that have no row. Hidden files and folders (a name
starting with '.') and the labels CSV itself are passed over silently.

The labels CSV: the first column holds the file name (the relative path, or
the base name when only one image has it); an optional `patient_id` column
makes the split patient-wise; every other column is a class with values 0
or 1. The class names are stored in the build's metadata (`class_names`).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import os

import numpy as np

from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data.builders import base

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg') + base.image_io.DICOM_SUFFIXES
PATIENT_COLUMN = 'patient_id'
# Unlabelled: nothing to evaluate, so no test split; 'train+validation' is every image.
UNLABELLED_FRACTIONS = {'validation': 0.1, 'test': 0.0}
LABELLED_FRACTIONS = {'validation': 0.1, 'test': 0.2}


@dataclasses.dataclass(eq=False)
class FolderConfig(base.XrayConfig):
  labels_csv: str = ''  # Absolute path; its content hash is in the config name.


def folder_config(image_size: int = info_lib.DEFAULT_IMAGE_SIZE, seed: int = 0,
                  validation_fraction: float | None = None,
                  test_fraction: float | None = None, image_encoding: str = 'raw',
                  labels_csv: str = '') -> FolderConfig:
  """'s<size>[...]' as for the other builders, plus '_labels<sha256[:8] of the CSV>'.

  The hash (not the path) names the build: an edited CSV gets a new build,
  a moved one reuses it.
  """
  defaults = LABELLED_FRACTIONS if labels_csv else UNLABELLED_FRACTIONS
  config = base.build_config(defaults, False, image_size, seed, 'any', validation_fraction,
                             test_fraction, image_encoding)
  name, description = config.name, config.description
  if labels_csv:
    labels_csv = os.path.abspath(labels_csv)
    if not os.path.isfile(labels_csv):
      raise base.MissingInputError(f'labels CSV not found: {labels_csv}')
    with open(labels_csv, 'rb') as f:
      name += '_labels' + hashlib.sha256(f.read()).hexdigest()[:8]
    description += f', labels from {os.path.basename(labels_csv)}'
  return FolderConfig(name=name, image_size=image_size, seed=seed,
                      validation_fraction=config.validation_fraction,
                      test_fraction=config.test_fraction, image_encoding=image_encoding,
                      labels_csv=labels_csv, description=description)


def walk(manual_dir: str, ignore: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
  """(images, other files) under manual_dir as sorted '/'-joined relative paths."""
  images, others = [], []
  for directory, dirs, files in os.walk(manual_dir):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for name in sorted(files):
      path = os.path.join(directory, name)
      if name.startswith('.') or os.path.abspath(path) in ignore:
        continue
      relative = os.path.relpath(path, manual_dir).replace(os.sep, '/')
      (images if name.lower().endswith(IMAGE_SUFFIXES) else others).append(relative)
  return images, others


def _csv_columns(path: str) -> tuple[str, list[str]]:
  """(file-name column, class columns) of a labels CSV's header."""
  with open(path, newline='', encoding='utf-8-sig') as f:
    header = [h.strip() for h in next(csv.reader(f), [])]
  if len(header) < 2:
    raise ValueError(f'{path}: needs a file-name column and at least one label column; '
                     f'header is {header}')
  return header[0], [c for c in header[1:] if c != PATIENT_COLUMN]


class Folder(base.XrayBuilder):
  """Any tree of PNG, JPEG and DICOM radiographs; labels from an optional CSV."""

  DEFAULT_FRACTIONS = UNLABELLED_FRACTIONS
  BUILDER_CONFIGS = [folder_config()]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point manual_dir at any folder: every .png, .jpg, .jpeg, .dcm and .dicom
  below it is read (recursively). Optional --labels_csv: first column the
  file name (path relative to manual_dir, or the base name), then 0/1 label
  columns (and optionally patient_id).
  """

  @property
  def CLASS_NAMES(self) -> tuple[str, ...]:  # pylint: disable=invalid-name
    """The labels CSV's class columns (none without a CSV)."""
    csv_path = self.builder_config.labels_csv
    return tuple(_csv_columns(csv_path)[1]) if csv_path else ()

  @classmethod
  def check_manual_dir(cls, manual_dir):
    for _, dirs, files in os.walk(manual_dir):
      dirs[:] = [d for d in dirs if not d.startswith('.')]
      if any(f.lower().endswith(IMAGE_SUFFIXES) for f in files):
        return
    raise base.MissingInputError(
        f'no image ({", ".join(IMAGE_SUFFIXES)}) found under {manual_dir}')

  def _sources(self, manual_dir):
    csv_path = self.builder_config.labels_csv
    ignore = (os.path.abspath(os.path.join(manual_dir, base.SYNTHETIC_MARKER)),)
    images, others = walk(manual_dir, ignore=ignore + ((csv_path,) if csv_path else ()))
    for relative in others:
      self._skip(relative, '', f'not an image: suffix {os.path.splitext(relative)[1]!r}')
    records = [base.SourceRecord(r, os.path.join(manual_dir, *r.split('/')),
                                 np.zeros(0, np.float32)) for r in images]
    if csv_path:
      records = self._label(records, csv_path)
    patients = any(r.patient_id for r in records)
    self.info.metadata.update(
        split_rule=(f'seeded {"patient" if patients else "image"}-wise split (ranked by '
                    'sha256(f"{seed}:{id}")): test, then validation, the rest train'),
        labels_csv=os.path.basename(csv_path) if csv_path else '')
    return self._split_by_image(records, group=lambda r: r.patient_id or r.file_name)

  def _label(self, records, csv_path):
    """Records that have a CSV row, with its labels; the others are skipped."""
    name_column, classes = _csv_columns(csv_path)
    rows = base.read_csv(csv_path, [name_column])
    by_path = {r.file_name: r for r in records}
    by_base = collections.defaultdict(list)
    for record in records:
      by_base[record.file_name.rsplit('/', 1)[-1]].append(record)
    labelled = {}
    for line, row in enumerate(rows, start=2):
      name = row[name_column].replace('\\', '/')
      name = name[2:] if name.startswith('./') else name
      candidates = [by_path[name]] if name in by_path else by_base.get(name, [])
      if len(candidates) > 1:
        raise ValueError(f'{csv_path}: line {line}: {name!r} matches '
                         f'{[r.file_name for r in candidates]}; give the relative path')
      if not candidates:
        self._skip(name, '', f'not found: row {line} of {os.path.basename(csv_path)} '
                   'names no image under manual_dir')
        continue
      record = candidates[0]
      if record.file_name in labelled:
        raise ValueError(f'{csv_path}: line {line}: second row for {record.file_name}')
      label = np.zeros(len(classes), np.float32)
      for i, column in enumerate(classes):
        value = row.get(column, '')
        if value not in ('0', '1', '0.0', '1.0'):
          raise ValueError(f'{csv_path}: line {line}: column {column!r} holds {value!r}; '
                           'labels must be 0 or 1')
        label[i] = float(value)
      labelled[record.file_name] = dataclasses.replace(
          record, label=label, patient_id=row.get(PATIENT_COLUMN, ''))
    for record in records:
      if record.file_name not in labelled:
        self._skip(record.file_name, '', f'no label: no row in {os.path.basename(csv_path)}')
    return [labelled[r.file_name] for r in records if r.file_name in labelled]
