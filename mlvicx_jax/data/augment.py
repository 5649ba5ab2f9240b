"""Numpy augmentations for single-channel radiographs (VICReg's, adapted).

SPEC section 2 lists VICReg's two-view recipe. On a grayscale image replicated
to three channels, ColorJitter's saturation and hue and RandomGrayscale are
identities, so only brightness and contrast remain; everything else keeps
torchvision's definitions (RandomResizedCrop sampling, GaussianBlur with a
fixed kernel, Solarize at 128). Images are float32 in [0, 1] between steps.
All randomness comes from the `rng` passed in (one block of VIEW_DRAWS
uniforms per view), so grain's per-record generators make results
reproducible and resumable.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from PIL import Image
from scipy import ndimage

from mlvicx_jax import config_files
from mlvicx_jax.data import info as info_lib

_RESAMPLE = {'bicubic': Image.Resampling.BICUBIC, 'bilinear': Image.Resampling.BILINEAR,
             'nearest': Image.Resampling.NEAREST}


def default_augment_config() -> ml_collections.ConfigDict:
  """VICReg's asymmetric two-view recipe (view2 differs in blur and solarise), and
  where the views are made (`on`: see placement).

  The values are written once, as `aug` of configs/nih.py; this reads them.
  """
  return config_files.load(config_files.PRETRAINING).aug


def default_classification_augment_config() -> ml_collections.ConfigDict:
  """Mild training augmentation for linear probes, fine-tuning and U-Net: the
  pretraining view without blur and solarise, with gentler crops and jitter."""
  view = default_augment_config().view1
  view.update(dict(blur_prob=0.0, solarize_prob=0.0, crop_scale=(0.7, 1.0), jitter_prob=0.5,
                   brightness=0.1, contrast=0.1))
  return ml_collections.ConfigDict(dict(
      view=view, mean=info_lib.IMAGENET_MEAN, std=info_lib.IMAGENET_STD))


PLACEMENTS = ('auto', 'device', 'host')


def placement(config) -> str:
  """Where the views are made: 'device' or 'host'.

  'auto' picks 'device' on accelerators, where host augmentation cannot keep
  up, and 'host' on CPU, where both compete for the same cores and the host
  path measured slightly faster end to end (docs/benchmarks.md). A config
  without the field predates device augmentation and means 'host'.
  """
  on = as_dict(config).get('on', 'host')
  if on == 'auto':
    return 'host' if jax.default_backend() == 'cpu' else 'device'
  return on


def as_dict(config) -> dict[str, Any]:
  return config.to_dict() if hasattr(config, 'to_dict') else dict(config)


# Each view consumes one fixed block of VIEW_DRAWS uniforms in [0, 1), slot by
# slot, whatever branches are taken; the device path (device_augment) maps the
# same slots to the same parameters, so the two can be compared draw for draw.
ROTATE, ANGLE = 0, 1
CROP, CROP_TRIES = 2, 10  # per try: area fraction, log aspect ratio, top, left
FLIP = CROP + 4 * CROP_TRIES
JITTER, BRIGHTNESS, CONTRAST, ORDER = FLIP + 1, FLIP + 2, FLIP + 3, FLIP + 4
BLUR, SIGMA, SOLARIZE = FLIP + 5, FLIP + 6, FLIP + 7
VIEW_DRAWS = FLIP + 8


def _between(u: float, low: float, high: float) -> float:
  return low + (high - low) * u


def random_resized_crop_box(draws: np.ndarray, height: int, width: int,
                            scale, ratio) -> tuple[int, int, int, int]:
  """(top, left, crop_height, crop_width) by torchvision's RandomResizedCrop rule.

  `draws` holds 4 * CROP_TRIES uniforms: per try the area fraction, the log
  aspect ratio, and the top and left offsets.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for attempt in range(CROP_TRIES):
    u_area, u_ratio, u_top, u_left = draws[4 * attempt:4 * attempt + 4]
    target_area = area * _between(u_area, scale[0], scale[1])
    aspect = math.exp(_between(u_ratio, *log_ratio))
    crop_w = int(round(math.sqrt(target_area * aspect)))
    crop_h = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      top = int(u_top * (height - crop_h + 1))  # randint(0, height - crop_h + 1)
      left = int(u_left * (width - crop_w + 1))
      return top, left, crop_h, crop_w
  # Fallback: the largest central crop within the ratio range.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    crop_w, crop_h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    crop_h, crop_w = height, int(round(height * ratio[1]))
  else:
    crop_w, crop_h = width, height
  return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def view_params(draws: np.ndarray, shape, cfg: Mapping[str, Any]) -> dict[str, Any]:
  """One view's random parameters from its VIEW_DRAWS uniforms (the reference rule)."""
  cfg = as_dict(cfg)
  jitter = lambda name: _between(draws[BRIGHTNESS if name == 'brightness' else CONTRAST],
                                 max(0.0, 1 - cfg[name]), 1 + cfg[name])
  return dict(
      angle=(_between(draws[ANGLE], -cfg['rotation_degrees'], cfg['rotation_degrees'])
             if draws[ROTATE] < cfg['rotation_prob'] else 0.0),
      box=random_resized_crop_box(draws[CROP:FLIP], shape[0], shape[1], cfg['crop_scale'],
                                  cfg['crop_ratio']),
      flip=bool(draws[FLIP] < cfg['hflip_prob']),
      jitter=bool(draws[JITTER] < cfg['jitter_prob']),
      brightness=jitter('brightness'),
      contrast=jitter('contrast'),
      brightness_first=bool(draws[ORDER] < 0.5),  # ColorJitter's random order
      blur=bool(draws[BLUR] < cfg['blur_prob']),
      sigma=_between(draws[SIGMA], *cfg['blur_sigma']),
      solarize=bool(draws[SOLARIZE] < cfg['solarize_prob']),
  )


def crop_resize(image: np.ndarray, box, size: int, interpolation: str = 'bicubic') -> np.ndarray:
  """Crops box=(top, left, h, w) of a 2-D array and resizes it to size x size."""
  top, left, crop_h, crop_w = box
  out = Image.fromarray(image).resize((size, size), _RESAMPLE[interpolation],
                   box=(left, top, left + crop_w, top + crop_h))
  return np.asarray(out)


def _rotate(image: np.ndarray, degrees: float, nearest: bool = False) -> np.ndarray:
  resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
  return np.asarray(Image.fromarray(image).rotate(degrees, resample=resample, fillcolor=0))


def adjust_brightness(x: np.ndarray, factor: float) -> np.ndarray:
  return np.clip(x * factor, 0.0, 1.0)


def adjust_contrast(x: np.ndarray, factor: float) -> np.ndarray:
  """Blends with the image mean, as torchvision's adjust_contrast."""
  return np.clip(x.mean() + factor * (x - x.mean()), 0.0, 1.0)


def gaussian_blur(x: np.ndarray, sigma: float, kernel_size: int) -> np.ndarray:
  """Fixed kernel_size window, reflect padding (torch 'reflect' == scipy 'mirror')."""
  return ndimage.gaussian_filter(x, sigma, radius=kernel_size // 2, mode='mirror')


def solarize(x: np.ndarray, threshold: int) -> np.ndarray:
  """Inverts pixels at or above threshold (0..255 scale) like torchvision."""
  return np.where(x * 255.0 >= threshold - 1e-3, 1.0 - x, x).astype(np.float32)


def _apply_geometry(image: np.ndarray, params, size: int, interpolation: str) -> np.ndarray:
  nearest = interpolation == 'nearest'
  if params['angle']:
    image = _rotate(image, params['angle'], nearest=nearest)
  out = crop_resize(image, params['box'], size, interpolation)
  return out[:, ::-1] if params['flip'] else out


def _photometric(x: np.ndarray, params, cfg: Mapping[str, Any]) -> np.ndarray:
  if params['jitter']:
    ops = [(adjust_brightness, params['brightness']), (adjust_contrast, params['contrast'])]
    for op, factor in (ops if params['brightness_first'] else ops[::-1]):
      x = op(x, factor)
  if params['blur']:
    x = gaussian_blur(x, params['sigma'], cfg['blur_kernel_size'])
  if params['solarize']:
    x = solarize(x, cfg['solarize_threshold'])
  return x


def augment_view(image: np.ndarray, rng: np.random.Generator, cfg: Mapping[str, Any],
                 size: int) -> np.ndarray:
  """One augmented (size, size) float32 view in [0, 1] of a uint8 (H, W) image."""
  cfg = as_dict(cfg)
  params = view_params(rng.random(VIEW_DRAWS), image.shape, cfg)
  x = _apply_geometry(image, params, size, cfg['interpolation']).astype(np.float32) / 255.0
  return _photometric(x, params, cfg)


def augment_image_and_mask(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                           cfg: Mapping[str, Any], size: int) -> tuple[np.ndarray, np.ndarray]:
  """Same geometry for image (bicubic) and mask (nearest); photometry on the image."""
  cfg = as_dict(cfg)
  params = view_params(rng.random(VIEW_DRAWS), image.shape, cfg)
  x = _apply_geometry(image, params, size, cfg['interpolation']).astype(np.float32) / 255.0
  m = _apply_geometry(mask, params, size, 'nearest')
  return _photometric(x, params, cfg), m


def resize_unit(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
  """Deterministic resize of a uint8 (H, W) image; float32 [0, 1] unless nearest."""
  box = (0, 0, image.shape[0], image.shape[1])
  out = crop_resize(image, box, size, 'nearest' if nearest else 'bicubic')
  return out if nearest else out.astype(np.float32) / 255.0


def normalize(x: np.ndarray, mean=info_lib.IMAGENET_MEAN, std=info_lib.IMAGENET_STD) -> np.ndarray:
  """(H, W) gray in [0, 1] -> (H, W, 3) float32 with per-channel mean/std."""
  x = np.asarray(x, np.float32)
  out = np.empty(x.shape + (len(mean),), np.float32)
  for channel, (m, s) in enumerate(zip(mean, std)):  # 10x faster than broadcasting.
    out[..., channel] = x * np.float32(1.0 / s) - np.float32(m / s)
  return out
