"""Numpy augmentations for single-channel radiographs (VICReg's, adapted).

SPEC section 2 lists VICReg's two-view recipe. On a grayscale image replicated
to three channels, ColorJitter's saturation and hue and RandomGrayscale are
identities, so only brightness and contrast remain; everything else keeps
torchvision's definitions (RandomResizedCrop sampling, GaussianBlur with a
fixed kernel, Solarize at 128). Images are float32 in [0, 1] between steps.
All randomness comes from the `rng` passed in, so grain's per-record
generators make results reproducible and resumable.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import ml_collections
import numpy as np
from PIL import Image
from scipy import ndimage

from mlvicx_jax.data import info as info_lib

_RESAMPLE = {'bicubic': Image.Resampling.BICUBIC, 'bilinear': Image.Resampling.BILINEAR,
             'nearest': Image.Resampling.NEAREST}


def _view_config(blur_prob: float, solarize_prob: float) -> dict[str, Any]:
  return dict(
      crop_scale=(0.08, 1.0),  # RandomResizedCrop area fraction.
      crop_ratio=(3 / 4, 4 / 3),  # RandomResizedCrop aspect ratio.
      interpolation='bicubic',
      hflip_prob=0.5,
      jitter_prob=0.8,  # ColorJitter(0.4, 0.4, ...) applied with this chance.
      brightness=0.4,
      contrast=0.4,
      blur_prob=blur_prob,
      blur_sigma=(0.1, 2.0),
      blur_kernel_size=23,  # torchvision GaussianBlur(23): radius 11 px.
      solarize_prob=solarize_prob,
      solarize_threshold=128,  # On the 0..255 scale, as torchvision.
      rotation_prob=0.0,  # Optional small rotation (off in VICReg).
      rotation_degrees=10.0,
  )


def default_augment_config() -> ml_collections.ConfigDict:
  """VICReg's asymmetric two-view recipe; view2 differs in blur and solarise."""
  return ml_collections.ConfigDict(dict(
      view1=_view_config(blur_prob=1.0, solarize_prob=0.0),
      view2=_view_config(blur_prob=0.1, solarize_prob=0.2),
      mean=info_lib.IMAGENET_MEAN,
      std=info_lib.IMAGENET_STD,
  ))


def default_classification_augment_config() -> ml_collections.ConfigDict:
  """Mild training augmentation for linear probes, fine-tuning and U-Net."""
  view = _view_config(blur_prob=0.0, solarize_prob=0.0)
  view.update(crop_scale=(0.7, 1.0), jitter_prob=0.5, brightness=0.1, contrast=0.1)
  return ml_collections.ConfigDict(dict(
      view=view, mean=info_lib.IMAGENET_MEAN, std=info_lib.IMAGENET_STD))


def _as_dict(config) -> dict[str, Any]:
  return config.to_dict() if hasattr(config, 'to_dict') else dict(config)


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale, ratio) -> tuple[int, int, int, int]:
  """(top, left, crop_height, crop_width) as torchvision's RandomResizedCrop."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    crop_w = int(round(math.sqrt(target_area * aspect)))
    crop_h = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      top = int(rng.integers(0, height - crop_h + 1))
      left = int(rng.integers(0, width - crop_w + 1))
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


def _geometry(rng, shape, cfg: Mapping[str, Any]):
  """Random geometric parameters shared by an image and its mask."""
  angle = 0.0
  if rng.random() < cfg['rotation_prob']:
    angle = rng.uniform(-cfg['rotation_degrees'], cfg['rotation_degrees'])
  box = random_resized_crop_box(rng, shape[0], shape[1], cfg['crop_scale'], cfg['crop_ratio'])
  flip = rng.random() < cfg['hflip_prob']
  return angle, box, flip


def _apply_geometry(image: np.ndarray, geometry, size: int, interpolation: str) -> np.ndarray:
  angle, box, flip = geometry
  nearest = interpolation == 'nearest'
  if angle:
    image = _rotate(image, angle, nearest=nearest)
  out = crop_resize(image, box, size, interpolation)
  return out[:, ::-1] if flip else out


def _photometric(x: np.ndarray, rng, cfg: Mapping[str, Any]) -> np.ndarray:
  if rng.random() < cfg['jitter_prob']:
    factors = {'brightness': rng.uniform(max(0.0, 1 - cfg['brightness']), 1 + cfg['brightness']),
               'contrast': rng.uniform(max(0.0, 1 - cfg['contrast']), 1 + cfg['contrast'])}
    for op in rng.permutation(['brightness', 'contrast']):  # Random order.
      x = (adjust_brightness if op == 'brightness' else adjust_contrast)(x, factors[op])
  if rng.random() < cfg['blur_prob']:
    x = gaussian_blur(x, rng.uniform(*cfg['blur_sigma']), cfg['blur_kernel_size'])
  if rng.random() < cfg['solarize_prob']:
    x = solarize(x, cfg['solarize_threshold'])
  return x


def augment_view(image: np.ndarray, rng: np.random.Generator, cfg: Mapping[str, Any],
                 size: int) -> np.ndarray:
  """One augmented (size, size) float32 view in [0, 1] of a uint8 (H, W) image."""
  cfg = _as_dict(cfg)
  geometry = _geometry(rng, image.shape, cfg)
  x = _apply_geometry(image, geometry, size, cfg['interpolation']).astype(np.float32) / 255.0
  return _photometric(x, rng, cfg)


def augment_image_and_mask(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                           cfg: Mapping[str, Any], size: int) -> tuple[np.ndarray, np.ndarray]:
  """Same geometry for image (bicubic) and mask (nearest); photometry on the image."""
  cfg = _as_dict(cfg)
  geometry = _geometry(rng, image.shape, cfg)
  x = _apply_geometry(image, geometry, size, cfg['interpolation']).astype(np.float32) / 255.0
  m = _apply_geometry(mask, geometry, size, 'nearest')
  return _photometric(x, rng, cfg), m


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
