"""Facts about the datasets: class names, tasks, splits, normalisation.

One place for each fact; builders, loaders and evaluation code read them here.
"""
from __future__ import annotations

import dataclasses

from mlvicx_jax import vocabulary

DATASETS = vocabulary.DATASETS

# SPEC section 3 order; "No Finding" is the all-zero vector.
NIH_CLASSES = (
    'Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass',
    'Nodule', 'Pneumonia', 'Pneumothorax', 'Consolidation', 'Edema',
    'Emphysema', 'Fibrosis', 'Pleural_Thickening', 'Hernia')
NIH_NO_FINDING = 'No Finding'

# VinDr-CXR class_id 0..13 in this order; class_id 14 is "No finding".
VINBIG_CLASSES = (
    'Aortic enlargement', 'Atelectasis', 'Calcification', 'Cardiomegaly',
    'Consolidation', 'ILD', 'Infiltration', 'Lung Opacity', 'Nodule/Mass',
    'Other lesion', 'Pleural effusion', 'Pleural thickening', 'Pneumothorax',
    'Pulmonary fibrosis')
VINBIG_NO_FINDING = 'No finding'
VINBIG_NO_FINDING_ID = 14

# CheXpert's 14 observations in the column order of train.csv / valid.csv.
CHEXPERT_CLASSES = (
    'No Finding', 'Enlarged Cardiomediastinum', 'Cardiomegaly', 'Lung Opacity',
    'Lung Lesion', 'Edema', 'Consolidation', 'Pneumonia', 'Atelectasis',
    'Pneumothorax', 'Pleural Effusion', 'Pleural Other', 'Fracture',
    'Support Devices')
# The CheXpert competition's five (Irvin et al. 2019), in CHEXPERT_CLASSES order.
CHEXPERT_COMPETITION = ('Cardiomegaly', 'Edema', 'Consolidation', 'Atelectasis',
                        'Pleural Effusion')

# PadChest's own label names (column `Labels` of its CSV, stripped) for the
# findings the other datasets also name: the counterparts of NIH's 14 in NIH
# order, then patterns and findings that CheXpert and VinDr-CXR label
# (docs/data.md, PadChest). A build may add every finding with at least N
# positives (builders/padchest.py, min_positives).
PADCHEST_CLASSES = (
    'atelectasis', 'cardiomegaly', 'pleural effusion', 'infiltrates', 'mass', 'nodule',
    'pneumonia', 'pneumothorax', 'consolidation', 'pulmonary edema', 'emphysema',
    'pulmonary fibrosis', 'pleural thickening', 'hiatal hernia', 'pulmonary mass',
    'alveolar pattern', 'interstitial pattern', 'heart insufficiency', 'fibrotic band',
    'costophrenic angle blunting', 'aortic elongation', 'fracture')

RSNA_CLASSES = ('Pneumonia',)
SIIM_CLASSES = ('Pneumothorax',)

# ImageNet statistics: the encoder may start from ImageNet weights (SPEC 2).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_IMAGE_SIZE = 256  # Stored size; crops of 224 are taken from it.


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What evaluation code needs to know about a dataset."""
  name: str
  class_names: tuple[str, ...]
  task: str  # 'multilabel', 'binary' or 'segmentation' (+ image label).
  splits: tuple[str, ...]
  has_mask: bool
  has_patient_id: bool

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


_INFOS = {
    'nih': DatasetInfo('nih', NIH_CLASSES, 'multilabel',
                       ('train', 'validation', 'test'), False, True),
    'vinbig': DatasetInfo('vinbig', VINBIG_CLASSES, 'multilabel',
                          ('train', 'validation', 'test'), False, False),
    'rsna': DatasetInfo('rsna', RSNA_CLASSES, 'binary',
                        ('train', 'validation', 'test'), False, True),
    'siim': DatasetInfo('siim', SIIM_CLASSES, 'segmentation',
                        ('train', 'validation', 'test'), True, True),
    'chexpert': DatasetInfo('chexpert', CHEXPERT_CLASSES, 'multilabel',
                            ('train', 'validation', 'test'), False, True),
    'padchest': DatasetInfo('padchest', PADCHEST_CLASSES, 'multilabel',
                            ('train', 'validation', 'test'), False, True),
    # Any tree of radiographs: its classes (none without --labels_csv) are
    # those of the build, read from the build's metadata (sources.class_names).
    'folder': DatasetInfo('folder', (), 'multilabel',
                          ('train', 'validation', 'test'), False, False),
}


def dataset_info(dataset: str) -> DatasetInfo:
  """Returns the DatasetInfo of one of DATASETS.

  Accepts a tfds-style 'name/config' too, the config being ignored.
  """
  name = dataset.split('/')[0]
  if name not in _INFOS:
    raise ValueError(f'Unknown dataset {dataset!r}; expected one of {DATASETS}.')
  return _INFOS[name]


def num_classes(dataset: str) -> int:
  return dataset_info(dataset).num_classes
