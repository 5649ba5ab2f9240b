"""SIIM-ACR Pneumothorax Segmentation: masks from RLE."""
from __future__ import annotations

import collections
import os

import numpy as np
import tensorflow_datasets as tfds

from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data import rle as rle_lib
from mlvicx_jax.data import splits as splits_lib
from mlvicx_jax.data.builders import base

SIIM_CSV = 'train-rle.csv'
SIIM_IMAGES = 'dicom-images-train'


class Siim(base.XrayBuilder):
  """SIIM-ACR Pneumothorax: masks from RLE; balanced positives and negatives."""

  CLASS_NAMES = info_lib.SIIM_CLASSES
  DEFAULT_FRACTIONS = {'validation': 0.2, 'test': 0.1}
  BUILDER_CONFIGS = [base.build_config(DEFAULT_FRACTIONS, False)]
  HOMEPAGE = 'https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the SIIM-ACR Pneumothorax training data into manual_dir:
  train-rle.csv and dicom-images-train/<study>/<series>/<ImageId>.dcm.
  """

  @classmethod
  def check_manual_dir(cls, manual_dir):
    base.require(manual_dir, SIIM_CSV)
    base.require(manual_dir, SIIM_IMAGES, kind='folder')

  def _extra_features(self):
    size = self.builder_config.image_size
    return {'mask': tfds.features.Image(shape=(size, size, 1), encoding_format='png')}

  def _extra_fields(self, record, fields):
    return {'mask': fields['mask']}

  def _sources(self, manual_dir):
    csv_path = os.path.join(manual_dir, SIIM_CSV)
    rows = base.read_csv(csv_path, ['ImageId', 'EncodedPixels'])
    rle_rows = collections.defaultdict(list)
    for row in rows:
      rle_rows[row['ImageId']].append(row['EncodedPixels'])
    index = base.index_files([os.path.join(manual_dir, SIIM_IMAGES)], ('.dcm',), recursive=True)
    positive = sorted(i for i, r in rle_rows.items()
                      if not all(rle_lib.is_empty_rle(x) for x in r))
    negative_pool = [i for i in rle_rows if i not in set(positive)]
    seed = self.builder_config.seed
    negative = splits_lib.rank(negative_pool, seed)[:len(positive)]
    out = {'train': [], 'validation': [], 'test': []}
    for group, value in ((positive, 1.0), (negative, 0.0)):
      records = [base.SourceRecord(i, index.get(i), np.array([value], np.float32), '',
                              {'rle_rows': tuple(rle_rows[i])}) for i in sorted(group)]
      for split, part in self._split_by_image(records).items():
        out[split] += part
    self.info.metadata.update(
        split_rule=('all positive images and as many negatives (the first of the '
                    'seeded ranking sha256(f"{seed}:{ImageId}")), each class split '
                    'by the same ranking into test/validation/train'),
        fractions=self._fractions(),
        num_positive=len(positive), num_negative_available=len(negative_pool))
    return out
