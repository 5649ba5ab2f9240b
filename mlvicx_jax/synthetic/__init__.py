r"""Synthetic chest X-ray datasets in the exact on-disk layout of the real ones.

  python -m mlvicx_jax.synthetic --dataset=nih --out=RAW --num_images=500 \
      --seed=0 [--image_size=256] [--nih_layout=images|kaggle]

The images come from `phantom` (anatomy plus findings); every label, box and
mask is derived from what was drawn, so a model can learn them. The files
mimic the real releases (SPEC section 3), formats included:

  nih:    Data_Entry_2017.csv (real columns), train_val_list.txt,
          test_list.txt (patient-disjoint), PNGs in images/ or the Kaggle
          images_001/images/ ... layout; a few PNGs are RGBA as in the real set.
  vinbig: train.csv with one row per box per radiologist (3 readers per
          image, each missing a finding now and then and rarely marking a
          false one, so 'any' and 'majority' labels differ), 16-bit DICOMs
          train/<image_id>.dicom, half MONOCHROME1, with window centre/width,
          rescale slope/intercept or a VOI LUT sequence.
  rsna:   stage_2_train_labels.csv (one row per box), stage_2_detailed_class_info.csv,
          JPEG-baseline DICOMs stage_2_train_images/<patientId>.dcm.
  siim:   train-rle.csv (SIIM relative column-major RLE, several rows for
          some images), JPEG-baseline DICOMs
          dicom-images-train/<study>/<series>/<ImageId>.dcm.
  chexpert: CheXpert-v1.0-small/{train,valid}.csv and JPEGs (`chexpert`).
  padchest: PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv and 16-bit
          PNGs <ImageDir>/<ImageID> with the release's quirks (`padchest`).

Modules: `anatomy` and `findings` draw, `phantom` exposes a film, `files`
writes PNG/CSV/DICOM, `layouts`, `chexpert` and `padchest` write each
release. Only the demo, the smoke configs and the tests use this package; pretraining reaches
it through one call, `data_dir_for(config, workdir)`, when a config asks for
synthetic images instead of a data_dir.
"""
from __future__ import annotations

import os

from absl import logging
import numpy as np

from mlvicx_jax import vocabulary

# The datasets with a fixed layout ('folder' reads any tree).
LAYOUTS = tuple(d for d in vocabulary.DATASETS if d != 'folder')


def generate(dataset: str, out: str, num_images: int, seed: int = 0,
             image_size: int = 256, nih_layout: str = 'images') -> dict:
  """Writes `num_images` synthetic images of `dataset` into `out`; returns counts."""
  from mlvicx_jax.synthetic import chexpert  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.synthetic import layouts  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.synthetic import padchest  # pylint: disable=g-import-not-at-top
  if dataset not in LAYOUTS:
    raise ValueError(f'no synthetic layout for {dataset!r}; expected one of {LAYOUTS} '
                     '(a folder build reads any tree, e.g. the images/ of a synthetic NIH)')
  if nih_layout not in ('images', 'kaggle'):
    raise ValueError(f"nih_layout must be 'images' or 'kaggle', got {nih_layout!r}")
  os.makedirs(out, exist_ok=True)
  from mlvicx_jax.data.builders import base  # pylint: disable=g-import-not-at-top
  with open(os.path.join(out, base.SYNTHETIC_MARKER), 'w') as f:
    f.write('Images made by mlvicx_jax.synthetic, not a real release.\n')
  rng = np.random.default_rng(seed)
  if dataset == 'nih':
    return layouts.write_nih(rng, out, num_images, image_size, nih_layout)
  if dataset == 'chexpert':
    return chexpert.generate(rng, out, num_images, image_size)
  if dataset == 'padchest':
    return padchest.generate(rng, out, num_images, image_size)
  return {'vinbig': layouts.write_vinbig, 'rsna': layouts.write_rsna,
          'siim': layouts.write_siim}[dataset](rng, out, num_images, image_size)


def prepare(dataset: str, root: str, num_images: int, *, image_size: int, seed: int = 0,
            stored_size: int | None = None) -> str:
  """Synthetic `dataset` in its real layout under root/raw_<dataset>, built into root/tfds.

  Several datasets share one root (and so one data_dir). The download is
  written aside and renamed into place, and a finished build is reused, so
  an interrupted call is simply repeated. `image_size` is the films' size,
  `stored_size` the build's (default: the same). Returns the TFDS data_dir.
  """
  from mlvicx_jax.data import prepare as prepare_lib  # pylint: disable=g-import-not-at-top
  data_dir = os.path.join(root, 'tfds')
  raw = os.path.join(root, f'raw_{dataset}')
  if not os.path.isdir(raw):
    logging.info('Writing %d synthetic %s images to %s', num_images, dataset, raw)
    generate(dataset, raw + '.partial', num_images, seed=seed, image_size=image_size)
    os.replace(raw + '.partial', raw)
  prepare_lib.prepare(dataset, raw, data_dir, image_size=stored_size or image_size, seed=seed)
  return data_dir


def data_dir_for(config, workdir: str) -> None:
  """Configs with synthetic_images > 0 and no data_dir (demo, smoke) get a synthetic build.

  Made once in WORKDIR/synthetic_nih by process 0, before pretraining starts;
  sets config.data_dir. Does nothing for a config with a data_dir.
  """
  if config.data_dir or config.synthetic_images <= 0:
    return
  import jax  # pylint: disable=g-import-not-at-top
  root = os.path.join(os.path.abspath(workdir), 'synthetic_nih')
  if jax.process_index() == 0:
    prepare(config.dataset, root, config.synthetic_images,
            image_size=config.synthetic_image_size, seed=config.seed)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('synthetic pretraining data ready')
  config.data_dir = os.path.join(root, 'tfds')
