"""TFDS builders, one module per dataset layout (SPEC section 3).

  base      what they share: config, source records, CSV reading, decoding,
            the skipped.json report
  nih       NIH ChestX-ray14        vinbig    VinDr-CXR
  rsna      RSNA Pneumonia          siim      SIIM-ACR Pneumothorax
  chexpert  CheXpert (uncertain labels kept apart)
  padchest  PadChest (16-bit PNGs, report-derived findings)
  folder    any tree of PNG/JPEG/DICOM, labels from an optional CSV

Run them through `python -m mlvicx_jax.data.prepare` (the `tfds build` CLI
needs TensorFlow).
"""
from __future__ import annotations

from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data.builders.base import IMAGE_ENCODINGS
from mlvicx_jax.data.builders.base import MissingInputError
from mlvicx_jax.data.builders.base import SKIPPED_REPORT
from mlvicx_jax.data.builders.base import SourceRecord
from mlvicx_jax.data.builders.base import VINBIG_LABEL_RULES
from mlvicx_jax.data.builders.base import XrayConfig
from mlvicx_jax.data.builders.chexpert import Chexpert
from mlvicx_jax.data.builders.folder import Folder
from mlvicx_jax.data.builders.nih import Nih
from mlvicx_jax.data.builders.padchest import Padchest
from mlvicx_jax.data.builders.rsna import Rsna
from mlvicx_jax.data.builders.siim import Siim
from mlvicx_jax.data.builders.vinbig import Vinbig
from mlvicx_jax.data.builders.vinbig import vinbig_label

BUILDERS = {'nih': Nih, 'vinbig': Vinbig, 'rsna': Rsna, 'siim': Siim, 'chexpert': Chexpert,
            'padchest': Padchest, 'folder': Folder}


def make_config(dataset: str, image_size: int = info_lib.DEFAULT_IMAGE_SIZE,
                seed: int = 0, label_rule: str = 'any',
                validation_fraction: float | None = None,
                test_fraction: float | None = None,
                image_encoding: str = 'raw', frontal_only: bool = False,
                labels_csv: str = '', physician_only: bool = False, min_positives: int = 0,
                manual_dir: str = '') -> XrayConfig:
  """The config of a build (a predefined one when the options are defaults).

  manual_dir: read only by a PadChest build with min_positives (its class list).
  """
  if frontal_only and dataset not in ('chexpert', 'padchest'):
    raise ValueError(f'frontal_only is a CheXpert option and a PadChest option, not one of '
                     f'{dataset!r}')
  for name, value in (('physician_only', physician_only), ('min_positives', min_positives)):
    if value and dataset != 'padchest':
      raise ValueError(f'{name} is a PadChest option, not one of {dataset!r}')
  if labels_csv and dataset != 'folder':
    raise ValueError(f'labels_csv is a folder option, not one of {dataset!r}')
  from mlvicx_jax.data.builders import base  # pylint: disable=g-import-not-at-top
  builder = BUILDERS[dataset]
  if dataset == 'folder':  # Its default fractions depend on whether it has labels.
    from mlvicx_jax.data.builders import folder  # pylint: disable=g-import-not-at-top
    config = folder.folder_config(image_size, seed, validation_fraction, test_fraction,
                                  image_encoding, labels_csv)
  else:
    config = base.build_config(builder.DEFAULT_FRACTIONS, dataset == 'vinbig', image_size, seed,
                               label_rule, validation_fraction, test_fraction, image_encoding)
  if dataset == 'chexpert':
    from mlvicx_jax.data.builders import chexpert  # pylint: disable=g-import-not-at-top
    config = chexpert.chexpert_config(config, frontal_only)
  if dataset == 'padchest':
    from mlvicx_jax.data.builders import padchest  # pylint: disable=g-import-not-at-top
    config = padchest.padchest_config(config, frontal_only, physician_only, min_positives,
                                      manual_dir)
  # tfds refuses a new config object named like a predefined one.
  predefined = {c.name: c for c in builder.BUILDER_CONFIGS}
  return predefined.get(config.name, config)


__all__ = ['BUILDERS', 'Chexpert', 'Folder', 'IMAGE_ENCODINGS', 'MissingInputError', 'Nih',
           'Padchest', 'Rsna',
           'SKIPPED_REPORT', 'Siim', 'SourceRecord', 'VINBIG_LABEL_RULES', 'Vinbig', 'XrayConfig',
           'make_config', 'vinbig_label']
