r"""Grad-CAM heatmaps of a chest X-ray classifier (paper Fig. 2).

  python -m mlvicx_jax.gradcam --checkpoint=DIR --images='xrays/*.png' --out=OUT \
      [--class_name=Effusion | --class_index=2] [--image_size=224] [--cam_layer=layer4|layer3]

DIR is a classifier saved by `python -m mlvicx_jax.evaluate` (under
WORKDIR/classifiers/<run>/) or a pretraining/import_torch checkpoint. For a
classifier the map explains one class logit (default: each image's top class);
a pretrained encoder has no classes, so the map explains the squared norm of
its pooled 512-d features (where the encoder responds, class-agnostic).

The maths lives in `mlvicx_jax.evaluate.gradcam`; `--cam_layer=layer3` takes
the map one stage earlier (twice the resolution). A map that is all zero (the
explained score falls everywhere, so Grad-CAM's ReLU leaves nothing) is drawn
as the X-ray alone, titled "no positive evidence".
"""
from __future__ import annotations

import glob
import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from mlvicx_jax import cli
from mlvicx_jax.evaluate import gradcam as cam

def load_explainer(path: str, cam_layer: str = 'layer4'):
  """(apply_fn, variables, class_names, image_size or None) from a checkpoint dir.

  A classifier saved by the evaluation program is recognised by its meta
  (`kind == 'classifier'`); anything else must load as a pretrained encoder.
  """
  from mlvicx_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from mlvicx_jax import models  # pylint: disable=g-import-not-at-top
  from mlvicx_jax import pretrained  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.evaluate import classification  # pylint: disable=g-import-not-at-top

  if not os.path.exists(path):
    raise checkpoint.CheckpointError(f'--checkpoint {path} does not exist')
  variables, meta, _ = checkpoint.restore_model(path)
  if meta.get('kind') == classification.MODEL_KIND:
    model, variables = classification.restore_classifier(path)
    return (cam.classifier_apply_fn(model, cam_layer), variables, list(meta['class_names']),
            meta.get('image_size'))
  encoder = pretrained.load(path)
  # The encoder as it was pretrained: context blocks and their statistics kept.
  backbone = models.build_backbone(encoder.model_config, keep_context_blocks=True)
  return (cam.encoder_apply_fn(backbone, cam_layer), encoder.backbone_variables(True),
          ['feature_norm'], None)


# --- images and figures -------------------------------------------------------------


def find_images(pattern: str) -> list[str]:
  """A file, a directory (its PNG/JPEG files) or a glob; error naming it if empty."""
  if os.path.isdir(pattern):
    files = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern))]
  elif os.path.isfile(pattern):
    files = [pattern]
  else:
    files = sorted(glob.glob(pattern))
  files = [f for f in files if f.lower().endswith(('.png', '.jpg', '.jpeg', '.dcm', '.dicom'))]
  if not files:
    raise FileNotFoundError(f'--images {pattern!r} matches no PNG, JPEG or DICOM file')
  return files


def load_image(path: str, image_size: int) -> np.ndarray:
  """A grayscale X-ray as (image_size, image_size) uint8, like the prepared datasets."""
  from mlvicx_jax.data import images as image_io  # pylint: disable=g-import-not-at-top
  return image_io.resize(image_io.read_image(path), image_size)


def normalize_images(gray: np.ndarray) -> np.ndarray:
  """uint8 (N, H, W) -> ImageNet-normalised float32 (N, H, W, 3), as in training."""
  from mlvicx_jax.data import info  # pylint: disable=g-import-not-at-top
  x = np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=-1)
  return (x - np.asarray(info.IMAGENET_MEAN, np.float32)) / np.asarray(
      info.IMAGENET_STD, np.float32)


def save_overlay(path: str, gray: np.ndarray, heatmap: np.ndarray, title: str,
                 alpha: float = 0.45) -> str:
  """Writes the X-ray, and the heatmap (jet) over it, side by side as a PNG.

  An all-zero map is not drawn: the right panel says "no positive evidence".
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
  axes[0].imshow(gray, cmap='gray')
  axes[0].set_title('X-ray')
  axes[1].imshow(gray, cmap='gray')
  if cam.has_positive_evidence(heatmap[None])[0]:
    im = axes[1].imshow(heatmap, cmap='jet', alpha=alpha, vmin=0.0, vmax=1.0)
    axes[1].set_title('Grad-CAM')
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
  else:
    axes[1].set_title('Grad-CAM: no positive evidence')
    axes[1].text(0.5, 0.5, 'no positive evidence\n(the score falls everywhere)',
                 transform=axes[1].transAxes, ha='center', va='center', color='yellow',
                 fontsize=11, bbox=dict(facecolor='black', alpha=0.6))
  for ax in axes:
    ax.axis('off')
  fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=100, bbox_inches='tight')
  plt.close(fig)
  return path


def explain_files(checkpoint: str, image_files: Sequence[str], out_dir: str, *,
                  class_index: int | None = None, class_name: str | None = None,
                  image_size: int | None = None, batch_size: int = 16,
                  cam_layer: str = 'layer4') -> list[str]:
  """Writes one overlay PNG per image; returns their paths."""
  apply_fn, variables, class_names, trained_size = load_explainer(checkpoint, cam_layer)
  if class_name:
    if class_index is not None:
      raise ValueError('give --class_index or --class_name, not both')
    if class_name not in class_names:
      raise ValueError(f'--class_name {class_name!r} is not a class of {checkpoint}; '
                       f'its classes are {class_names}')
    class_index = class_names.index(class_name)
  if class_index is not None and not 0 <= class_index < len(class_names):
    raise ValueError(f'--class_index {class_index} is out of range: {checkpoint} has '
                     f'{len(class_names)} classes {class_names}')
  size = image_size or trained_size or 224
  os.makedirs(out_dir, exist_ok=True)
  cam_fn = jax.jit(lambda v, x, k: cam.gradcam(apply_fn, v, x, k))
  paths = []
  for start in range(0, len(image_files), batch_size):
    files = image_files[start:start + batch_size]
    gray = np.stack([load_image(f, size) for f in files])
    x = jnp.asarray(normalize_images(gray))
    if class_index is None:
      scores = apply_fn(variables, x, 0.0)[0]
      index = jnp.argmax(scores, axis=1)
    else:
      index = jnp.full((len(files),), class_index, jnp.int32)
    maps, scores = cam_fn(variables, x, index)
    evidence = cam.has_positive_evidence(maps)
    maps = cam.normalize_maps(maps)
    probs = np.asarray(jax.nn.sigmoid(scores))
    for f, g, m, k, p, e in zip(files, gray, maps, np.asarray(index), probs, evidence):
      name = class_names[int(k)]
      title = (f'{os.path.basename(f)}: {name}' +
               ('' if name == 'feature_norm' else f' (p = {p[int(k)]:.3f})') +
               ('' if e else ', no positive evidence'))
      if not e:
        logging.warning('%s: no positive evidence for %s (the Grad-CAM map is all zero)',
                        f, name)
      stem = os.path.splitext(os.path.basename(f))[0]
      paths.append(save_overlay(
          os.path.join(out_dir, f'{stem}_gradcam_{_slug(name)}.png'), g, m, title))
      logging.info('wrote %s', paths[-1])
  return paths


def _slug(text: str) -> str:
  return ''.join(c if c.isalnum() or c in '-_.' else '-' for c in text)


_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Classifier (evaluate workdir/'
                                  'classifiers/<run>) or pretrained checkpoint directory.')
_IMAGES = flags.DEFINE_string('images', None, 'Image file, directory or glob (PNG/JPEG/DICOM).')
_OUT = flags.DEFINE_string('out', None, 'Output directory for the PNG overlays.')
_CLASS_INDEX = flags.DEFINE_integer('class_index', None, 'Class to explain (default: top class).')
_CLASS_NAME = flags.DEFINE_string('class_name', None, 'Class to explain, by name.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None,
                                   'Input size (default: the size the classifier was trained at).')
_CAM_LAYER = flags.DEFINE_enum('cam_layer', 'layer4', list(cam.CAM_LAYERS),
                               'ResNet stage whose map Grad-CAM uses (layer3: twice the '
                               'resolution).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  paths = explain_files(_CHECKPOINT.value, find_images(_IMAGES.value), _OUT.value,
                        class_index=_CLASS_INDEX.value, class_name=_CLASS_NAME.value,
                        image_size=_IMAGE_SIZE.value, cam_layer=_CAM_LAYER.value)
  print(f'wrote {len(paths)} Grad-CAM overlays to {_OUT.value}')


def _errors() -> tuple:
  from mlvicx_jax import checkpoint  # pylint: disable=g-import-not-at-top
  return (checkpoint.CheckpointError, FileNotFoundError, ValueError)


if __name__ == '__main__':
  flags.mark_flags_as_required(['checkpoint', 'images', 'out'])
  app.run(cli.exit_on_user_errors(main, _errors))
