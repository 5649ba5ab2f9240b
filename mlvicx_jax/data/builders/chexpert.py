"""CheXpert (Stanford, v1.0 and v1.0-small): 14 observations with uncertain labels.

Layout (SPEC section 3): <release>/train.csv, <release>/valid.csv and
<release>/{train,valid}/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg,
where <release> is CheXpert-v1.0-small or CheXpert-v1.0. The CSV's `Path`
starts with the release folder's name, so manual_dir is the folder that
contains the release (the release folder itself is accepted too).

Labels: `label` is 1 where the cell is 1.0 and 0 otherwise (0.0, -1.0 and
blank), i.e. the U-Zeros reading; `uncertain` marks the -1.0 cells, so the
uncertainty policy is chosen when the data are read (data/label_policy.py),
one build serving every policy. Blank (not mentioned) is a negative.

Splits: valid.csv (radiologist labels, no uncertain cells) is the test
split; validation is a seeded patient-wise hold-out of train.csv. Frontal-only
builds (config name suffix `_frontal`) keep the frontal rows only.
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data import splits as splits_lib
from mlvicx_jax.data.builders import base

RELEASES = ('CheXpert-v1.0-small', 'CheXpert-v1.0')
TRAIN_CSV = 'train.csv'
VALID_CSV = 'valid.csv'
META_COLUMNS = ('Path', 'Sex', 'Age', 'Frontal/Lateral', 'AP/PA')
# Cell text -> (label, uncertain). Blank: not mentioned, a negative.
CELLS = {'1.0': (1.0, False), '1': (1.0, False), '0.0': (0.0, False), '0': (0.0, False),
         '-1.0': (0.0, True), '-1': (0.0, True), '': (0.0, False)}
VIEWS = ('Frontal', 'Lateral')
_FRACTIONS = {'validation': 0.1, 'test': 0.0}  # Test is valid.csv.
_PATIENT = re.compile(r'(?:^|/)(patient\d+)/(study\d+)/')


@dataclasses.dataclass(eq=False)
class ChexpertConfig(base.XrayConfig):
  frontal_only: bool = False  # keep the Frontal rows only


def chexpert_config(config: base.XrayConfig, frontal_only: bool = False) -> ChexpertConfig:
  """`config` (base.build_config) as a ChexpertConfig, named '<name>_frontal' if frontal only."""
  fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(base.XrayConfig)}
  if frontal_only:
    fields['name'] += '_frontal'
    fields['description'] += ', frontal views only'
  return ChexpertConfig(**fields, frontal_only=frontal_only)


def release_dir(manual_dir: str) -> str:
  """The folder holding train.csv: manual_dir/<release> or manual_dir itself."""
  for name in RELEASES:
    if os.path.isfile(os.path.join(manual_dir, name, TRAIN_CSV)):
      return os.path.join(manual_dir, name)
  return manual_dir


def parse_row(row: dict, csv_path: str, line: int) -> tuple[np.ndarray, np.ndarray]:
  """(label, uncertain) of one CSV row, in CHEXPERT_CLASSES order."""
  label = np.zeros(len(info_lib.CHEXPERT_CLASSES), np.float32)
  uncertain = np.zeros(len(info_lib.CHEXPERT_CLASSES), bool)
  for k, name in enumerate(info_lib.CHEXPERT_CLASSES):
    cell = row[name]
    if cell not in CELLS:
      raise ValueError(f'{csv_path}: line {line}: column {name!r}: unknown value {cell!r} '
                       f'(expected 1.0, 0.0, -1.0 or blank)')
    label[k], uncertain[k] = CELLS[cell]
  return label, uncertain


class Chexpert(base.XrayBuilder):
  """CheXpert: 14 observations (uncertain kept apart), official valid.csv as test."""

  CLASS_NAMES = info_lib.CHEXPERT_CLASSES
  DEFAULT_FRACTIONS = _FRACTIONS
  BUILDER_CONFIGS = [chexpert_config(base.build_config(_FRACTIONS, False), frontal)
                     for frontal in (False, True)]
  HOMEPAGE = 'https://stanfordmlgroup.github.io/competitions/chexpert/'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download CheXpert-v1.0-small (or the full CheXpert-v1.0) and unpack it so that
  manual_dir holds CheXpert-v1.0-small/train.csv, CheXpert-v1.0-small/valid.csv
  and the images under CheXpert-v1.0-small/{train,valid}/ (manual_dir may also
  be the release folder itself).
  """

  @classmethod
  def check_manual_dir(cls, manual_dir):
    root = release_dir(manual_dir)
    for name in (TRAIN_CSV, VALID_CSV):
      if not os.path.isfile(os.path.join(root, name)):
        where = ' or '.join(os.path.join(manual_dir, r, name) for r in RELEASES)
        raise base.MissingInputError(f'required file not found: {where} '
                                     f'(or {os.path.join(manual_dir, name)})')

  def _extra_features(self):
    size = len(self.CLASS_NAMES)
    return {'uncertain': tfds.features.Tensor(shape=(size,), dtype=np.bool_),
            'view': tfds.features.Text(), 'ap_pa': tfds.features.Text(),
            'sex': tfds.features.Text(), 'age': tfds.features.Tensor(shape=(), dtype=np.int32),
            'study': tfds.features.Text()}

  def _extra_fields(self, record, fields):
    del fields
    return {k: record.extra[k] for k in ('uncertain', 'view', 'ap_pa', 'sex', 'age', 'study')}

  def _read(self, root: str, csv_name: str) -> list[base.SourceRecord]:
    csv_path = os.path.join(root, csv_name)
    rows = base.read_csv(csv_path, META_COLUMNS + info_lib.CHEXPERT_CLASSES)
    records, seen = [], set()
    for line, row in enumerate(rows, start=2):
      path = row['Path'].replace('\\', '/')
      match = _PATIENT.search(path)
      if not match:
        raise ValueError(f'{csv_path}: line {line}: column Path {path!r} has no '
                         'patientNNNNN/studyN/ folders')
      if row['Frontal/Lateral'] not in VIEWS:
        raise ValueError(f'{csv_path}: line {line}: column Frontal/Lateral: unknown value '
                         f'{row["Frontal/Lateral"]!r} (expected {VIEWS})')
      label, uncertain = parse_row(row, csv_path, line)
      # Relative to the release folder: the same name in the small and full releases.
      parts = path.split('/')
      name = '/'.join(parts[1:] if parts[0] not in ('train', 'valid') else parts)
      if name in seen:
        self._skip(name, csv_name, f'duplicate row: line {line} repeats an earlier Path')
        continue
      seen.add(name)
      if self.builder_config.frontal_only and row['Frontal/Lateral'] != 'Frontal':
        continue
      file_path = os.path.join(root, *name.split('/'))
      try:
        age = int(float(row['Age'])) if row['Age'] else -1
      except ValueError:
        raise ValueError(f'{csv_path}: line {line}: column Age: {row["Age"]!r} is not a '
                         'number') from None
      records.append(base.SourceRecord(
          name, file_path if os.path.isfile(file_path) else None, label, match.group(1),
          extra={'uncertain': uncertain, 'view': row['Frontal/Lateral'],
                 'ap_pa': row['AP/PA'], 'sex': row['Sex'], 'age': np.int32(age),
                 'study': f'{match.group(1)}/{match.group(2)}'}))
    return records

  def _sources(self, manual_dir):
    root = release_dir(manual_dir)
    train = self._read(root, TRAIN_CSV)
    test = self._read(root, VALID_CSV)
    shared = {r.patient_id for r in train} & {r.patient_id for r in test}
    if shared:
      raise ValueError(f'{TRAIN_CSV} and {VALID_CSV} share {len(shared)} patients, '
                       f'e.g. {sorted(shared)[:3]}')
    held_out = splits_lib.assign_groups(
        [r.patient_id for r in train], {'validation': self.builder_config.validation_fraction},
        self.builder_config.seed)
    self.info.metadata.update(
        split_rule=(f'test: the official {VALID_CSV}; validation: seeded patient-wise '
                    f'hold-out of {TRAIN_CSV} (patients ranked by '
                    'sha256(f"{seed}:{patient_id}")); train: the rest'),
        validation_fraction_of_patients=self.builder_config.validation_fraction,
        frontal_only=bool(self.builder_config.frontal_only),
        label_encoding=('label: 1 where the cell is 1.0, else 0 (U-Zeros); uncertain: the '
                        '-1.0 cells; blank cells are negatives'))
    return {
        'train': [r for r in train if held_out[r.patient_id] == 'train'],
        'validation': [r for r in train if held_out[r.patient_id] == 'validation'],
        'test': test,
    }
