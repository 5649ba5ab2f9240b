"""NIH ChestX-ray14: 14 findings, official test list, patient-wise validation."""
from __future__ import annotations

import glob
import os

import numpy as np

from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data import splits as splits_lib
from mlvicx_jax.data.builders import base

NIH_CSV = ('Data_Entry_2017.csv', 'Data_Entry_2017_v2020.csv')
NIH_TRAIN_VAL = 'train_val_list.txt'
NIH_TEST = 'test_list.txt'


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
  images_012/images/.
  """

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
    return {
        'train': [r for r in train_val if held_out[r.patient_id] == 'train'],
        'validation': [r for r in train_val if held_out[r.patient_id] == 'validation'],
        'test': [by_name[n] for n in test if n in by_name],
    }


def _nih_image_dirs(manual_dir: str) -> list[str]:
  dirs = [os.path.join(manual_dir, 'images')]
  dirs += sorted(glob.glob(os.path.join(glob.escape(manual_dir), 'images_*', 'images')))
  return [d for d in dirs if os.path.isdir(d)]
