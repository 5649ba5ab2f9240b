"""RSNA Pneumonia Detection: binary image label."""
from __future__ import annotations

import collections
import os

import numpy as np

from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data.builders import base

RSNA_CSV = 'stage_2_train_labels.csv'
RSNA_IMAGES = 'stage_2_train_images'


class Rsna(base.XrayBuilder):
  """RSNA Pneumonia: binary image label (any box with Target 1); split by image."""

  CLASS_NAMES = info_lib.RSNA_CLASSES
  BUILDER_CONFIGS = [base.build_config(base.XrayBuilder.DEFAULT_FRACTIONS, False)]
  HOMEPAGE = 'https://www.kaggle.com/c/rsna-pneumonia-detection-challenge'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the Kaggle "rsna-pneumonia-detection-challenge" data into manual_dir:
  stage_2_train_labels.csv and stage_2_train_images/<patientId>.dcm.
  """

  @classmethod
  def check_manual_dir(cls, manual_dir):
    base.require(manual_dir, RSNA_CSV)
    base.require(manual_dir, RSNA_IMAGES, kind='folder')

  def _sources(self, manual_dir):
    csv_path = os.path.join(manual_dir, RSNA_CSV)
    rows = base.read_csv(csv_path, ['patientId', 'Target'])
    target = collections.defaultdict(int)
    for line, row in enumerate(rows, start=2):
      if row['Target'] not in ('0', '1'):
        raise ValueError(f'{csv_path}: line {line}: Target {row["Target"]!r} is not 0 or 1')
      target[row['patientId']] |= int(row['Target'])
    index = base.index_files([os.path.join(manual_dir, RSNA_IMAGES)], ('.dcm', '.png'))
    records = [base.SourceRecord(pid, index.get(pid), np.array([target[pid]], np.float32), pid)
               for pid in sorted(target)]
    self.info.metadata.update(
        split_rule='seeded split by patientId (one image each; ranked by '
                   'sha256(f"{seed}:{patientId}"))',
        fractions=self._fractions())
    return self._split_by_image(records)
