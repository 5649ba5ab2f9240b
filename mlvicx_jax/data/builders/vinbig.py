"""VinDr-CXR (VinBigData Kaggle release): image labels from 3 readers."""
from __future__ import annotations

import collections
import os

import numpy as np
import tensorflow_datasets as tfds

from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data.builders import base

VINBIG_CSV = 'train.csv'
VINBIG_IMAGES = 'train'


class Vinbig(base.XrayBuilder):
  """VinDr-CXR: 14 findings from 3 radiologists per image; split by image."""

  CLASS_NAMES = info_lib.VINBIG_CLASSES
  BUILDER_CONFIGS = [base.build_config(base.XrayBuilder.DEFAULT_FRACTIONS, True, label_rule=rule)
                     for rule in base.VINBIG_LABEL_RULES]
  HOMEPAGE = 'https://www.kaggle.com/c/vinbigdata-chest-xray-abnormalities-detection'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the Kaggle "vinbigdata-chest-xray-abnormalities-detection" data into
  manual_dir: train.csv and train/<image_id>.dicom (PNG conversions
  train/<image_id>.png are accepted too).
  """

  @classmethod
  def check_manual_dir(cls, manual_dir):
    base.require(manual_dir, VINBIG_CSV)
    base.require(manual_dir, VINBIG_IMAGES, kind='folder')

  def _extra_features(self):
    return {'votes': tfds.features.Tensor(shape=(len(self.CLASS_NAMES),), dtype=np.int32),
            'num_readers': tfds.features.Tensor(shape=(), dtype=np.int32)}

  def _extra_fields(self, record, fields):
    return {'votes': record.extra['votes'], 'num_readers': record.extra['num_readers']}

  def _sources(self, manual_dir):
    csv_path = os.path.join(manual_dir, VINBIG_CSV)
    rows = base.read_csv(csv_path, ['image_id', 'class_id', 'rad_id'])
    readers = collections.defaultdict(set)
    marks = collections.defaultdict(set)  # (image_id, class_id) -> rad_ids.
    for line, row in enumerate(rows, start=2):
      try:
        class_id = int(float(row['class_id']))
      except ValueError:
        raise ValueError(f'{csv_path}: line {line}: class_id {row["class_id"]!r} '
                         'is not an integer') from None
      if not 0 <= class_id <= info_lib.VINBIG_NO_FINDING_ID:
        raise ValueError(f'{csv_path}: line {line}: class_id {class_id} out of 0..14')
      readers[row['image_id']].add(row['rad_id'])
      if class_id != info_lib.VINBIG_NO_FINDING_ID:
        marks[(row['image_id'], class_id)].add(row['rad_id'])
    index = base.index_files([os.path.join(manual_dir, VINBIG_IMAGES)],
                         ('.dicom', '.dcm', '.png'))
    rule = self.builder_config.label_rule
    records = []
    for image_id in sorted(readers):
      votes = np.array([len(marks.get((image_id, c), ())) for c in
                        range(len(self.CLASS_NAMES))], np.int32)
      num_readers = len(readers[image_id])
      label = vinbig_label(votes, num_readers, rule)
      records.append(base.SourceRecord(image_id, index.get(image_id), label, '',
                                  {'votes': votes, 'num_readers': np.int32(num_readers)}))
    self.info.metadata.update(
        label_rule=rule,
        split_rule='seeded split by image_id (ranked by sha256(f"{seed}:{image_id}"))',
        fractions=self._fractions())
    return self._split_by_image(records)


def vinbig_label(votes: np.ndarray, num_readers: int, rule: str) -> np.ndarray:
  """Image-level label from per-finding reader votes.

  'any': some reader marked the finding; 'majority': more than half of the
  readers of that image marked it.
  """
  votes = np.asarray(votes)
  if rule == 'any':
    return (votes > 0).astype(np.float32)
  if rule == 'majority':
    return (2 * votes > num_readers).astype(np.float32)
  raise ValueError(f'unknown VinBig label rule {rule!r}; use one of {base.VINBIG_LABEL_RULES}')
