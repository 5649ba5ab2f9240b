"""Two-view augmentation inside the jitted step: uint8 grey images in, views out.

The host ships each example's stored uint8 image and its position in the
global stream; the views are made here, under the batch's sharding, so an
accelerator is not starved by numpy augmentation on a few host cores, and
PCIe carries one byte per pixel instead of two float32 RGB views (24 bytes).

Randomness: view v of the example at stream position p draws from
fold_in(fold_in(PRNGKey(seed), p), v), so a batch depends on neither the
process nor the device count, and a resumed run makes the same views.

The uniforms map to crop boxes, flips and jitter factors slot by slot as in
`augment.view_params`, the numpy reference. Resampling is PIL's (the
antialiased separable filter that torchvision's RandomResizedCrop calls on
PIL images) written as two small matrix products per image; the Gaussian
blur with reflect padding is one more pair. Matrix products are what
accelerators do fastest, and they need no data-dependent shapes.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mlvicx_jax.data import augment

_FILTER_SUPPORT = {'bicubic': 2.0, 'bilinear': 1.0}
INTERPOLATIONS = tuple(_FILTER_SUPPORT)  # 'nearest' is for masks, made on the host


def _cubic(x: jax.Array, a: float) -> jax.Array:
  """Keys' cubic convolution kernel (PIL: a = -0.5 to resize, -1 to rotate)."""
  x = jnp.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return jnp.where(x < 1.0, near, jnp.where(x < 2.0, far, 0.0))


def _filter(x: jax.Array, interpolation: str) -> jax.Array:
  if interpolation == 'bicubic':
    return _cubic(x, -0.5)
  return jnp.maximum(0.0, 1.0 - jnp.abs(x))  # bilinear (triangle)


def resample_matrix(start, length, in_size: int, out_size: int,
                    interpolation: str) -> jax.Array:
  """(out_size, in_size) weights resizing [start, start + length) to out_size.

  PIL's rule (Resample.c, precompute_coeffs): output pixel o is centred at
  start + (o + 0.5) * scale in the input; when shrinking, the filter is
  stretched by the scale (antialiasing); weights are normalised per row.
  """
  scale = length / out_size
  centre = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale
  source = jnp.arange(in_size, dtype=jnp.float32)
  stretch = jnp.maximum(scale, 1.0)
  support = _FILTER_SUPPORT[interpolation] * stretch
  low = jnp.maximum(jnp.trunc(centre - support + 0.5), 0.0)[:, None]
  high = jnp.minimum(jnp.trunc(centre + support + 0.5), in_size)[:, None]
  weights = _filter((source[None, :] - centre[:, None] + 0.5) / stretch, interpolation)
  weights = jnp.where((source[None, :] >= low) & (source[None, :] < high), weights, 0.0)
  return weights / weights.sum(axis=1, keepdims=True)


@functools.lru_cache(maxsize=None)
def _reflect_taps(size: int, kernel_size: int) -> np.ndarray:
  """(kernel_size, size, size) 0/1: tap k of row i reads reflect(i + k - radius)."""
  radius = kernel_size // 2
  index = np.arange(size)[:, None] + np.arange(-radius, radius + 1)[None, :]
  period = 2 * (size - 1)
  index = np.abs(index) % period  # torch 'reflect': the edge pixel is not repeated
  index = np.where(index >= size, period - index, index)
  taps = np.zeros((kernel_size, size, size), np.float32)
  rows = np.arange(size)
  for k in range(kernel_size):
    np.add.at(taps[k], (rows, index[:, k]), 1.0)
  return taps


def blur_matrix(sigma, size: int, kernel_size: int) -> jax.Array:
  """(size, size) Gaussian blur of one axis with a kernel_size window, reflect padding."""
  offsets = jnp.arange(kernel_size, dtype=jnp.float32) - kernel_size // 2
  kernel = jnp.exp(-0.5 * (offsets / sigma) ** 2)
  kernel = kernel / kernel.sum()
  return jnp.einsum('k,kij->ij', kernel, _reflect_taps(size, kernel_size))


def crop_box(draws: jax.Array, height: int, width: int, scale, ratio):
  """(top, left, crop_h, crop_w) as float32 scalars, by augment.random_resized_crop_box."""
  tries = draws.reshape(augment.CROP_TRIES, 4)
  area = float(height * width)
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  target = area * (scale[0] + (scale[1] - scale[0]) * tries[:, 0])
  aspect = jnp.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * tries[:, 1])
  crop_w = jnp.round(jnp.sqrt(target * aspect))  # half to even, as Python's round
  crop_h = jnp.round(jnp.sqrt(target / aspect))
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first = jnp.argmax(fits)
  crop_h, crop_w, row = crop_h[first], crop_w[first], tries[first]
  top = jnp.floor(row[2] * (height - crop_h + 1))
  left = jnp.floor(row[3] * (width - crop_w + 1))
  # Fallback when no try fits: the largest central crop within the ratio range.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fall_w, fall_h = width, round(width / ratio[0])
  elif in_ratio > ratio[1]:
    fall_w, fall_h = round(height * ratio[1]), height
  else:
    fall_w, fall_h = width, height
  found = fits.any()
  pick = lambda a, b: jnp.where(found, a, jnp.float32(b))
  return (pick(top, (height - fall_h) // 2), pick(left, (width - fall_w) // 2),
          pick(crop_h, fall_h), pick(crop_w, fall_w))


def view_params(draws: jax.Array, height: int, width: int, cfg: Mapping[str, Any]) -> dict:
  """augment.view_params for one view, traced: booleans and float32 scalars."""
  a = augment
  between = lambda u, low, high: low + (high - low) * u
  return dict(
      rotate=draws[a.ROTATE] < cfg['rotation_prob'],
      angle=between(draws[a.ANGLE], -cfg['rotation_degrees'], cfg['rotation_degrees']),
      box=crop_box(draws[a.CROP:a.FLIP], height, width, cfg['crop_scale'], cfg['crop_ratio']),
      flip=draws[a.FLIP] < cfg['hflip_prob'],
      jitter=draws[a.JITTER] < cfg['jitter_prob'],
      brightness=between(draws[a.BRIGHTNESS], max(0.0, 1 - cfg['brightness']),
                         1 + cfg['brightness']),
      contrast=between(draws[a.CONTRAST], max(0.0, 1 - cfg['contrast']), 1 + cfg['contrast']),
      brightness_first=draws[a.ORDER] < 0.5,
      blur=draws[a.BLUR] < cfg['blur_prob'],
      sigma=between(draws[a.SIGMA], *cfg['blur_sigma']),
      solarize=draws[a.SOLARIZE] < cfg['solarize_prob'],
  )


def rotate(image: jax.Array, degrees) -> jax.Array:
  """PIL's Image.rotate(degrees, BICUBIC, fillcolor=0) of an (H, W) float image.

  Counter-clockwise about the centre; each output pixel centre maps back by the
  inverse rotation; points outside the image are 0; the 4 x 4 taps clamp at
  the border; PIL's transforms use the a = -1 cubic.
  """
  height, width = image.shape
  theta = -jnp.deg2rad(degrees)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  y, x = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32) + 0.5,
                      jnp.arange(width, dtype=jnp.float32) + 0.5, indexing='ij')
  cx, cy = width / 2.0, height / 2.0
  sx = cos * (x - cx) + sin * (y - cy) + cx
  sy = -sin * (x - cx) + cos * (y - cy) + cy
  inside = (sx >= 0) & (sx < width) & (sy >= 0) & (sy < height)
  sx, sy = sx - 0.5, sy - 0.5
  x0, y0 = jnp.floor(sx), jnp.floor(sy)
  taps = jnp.arange(-1, 3, dtype=jnp.float32)
  wx = _cubic(sx[..., None] - (x0[..., None] + taps), -1.0)  # (H, W, 4)
  wy = _cubic(sy[..., None] - (y0[..., None] + taps), -1.0)
  cols = jnp.clip(x0[..., None] + taps, 0, width - 1).astype(jnp.int32)
  rows = jnp.clip(y0[..., None] + taps, 0, height - 1).astype(jnp.int32)
  patch = image[rows[..., :, None], cols[..., None, :]]  # (H, W, 4 rows, 4 cols)
  value = jnp.einsum('hwr,hwrc,hwc->hw', wy, patch, wx)
  return jnp.where(inside, value, 0.0)


def _to_levels(x: jax.Array) -> jax.Array:
  """PIL hands back uint8: round and clip to the 0..255 levels."""
  return jnp.clip(jnp.round(x), 0.0, 255.0)


def adjust_contrast(x: jax.Array, factor) -> jax.Array:
  return jnp.clip(x.mean() + factor * (x - x.mean()), 0.0, 1.0)


def adjust_brightness(x: jax.Array, factor) -> jax.Array:
  return jnp.clip(x * factor, 0.0, 1.0)


def augment_view(image: jax.Array, draws: jax.Array, cfg: Mapping[str, Any],
                 size: int) -> jax.Array:
  """One (size, size) float32 view in [0, 1] of an (H, W) image in 0..255 levels.

  Stages whose probability is 0 in `cfg` are left out of the program.
  """
  height, width = image.shape
  p = view_params(draws, height, width, cfg)
  interpolation = cfg['interpolation']
  if cfg['rotation_prob'] > 0:
    image = jnp.where(p['rotate'], _to_levels(rotate(image, p['angle'])), image)
  top, left, crop_h, crop_w = p['box']
  rows = resample_matrix(top, crop_h, height, size, interpolation)
  cols = resample_matrix(left, crop_w, width, size, interpolation)
  cols = jnp.where(p['flip'], cols[::-1], cols)
  # PIL resamples columns first and stores that pass in uint8 (bicubic overshoot clipped).
  x = _to_levels(rows @ _to_levels(image @ cols.T)) / 255.0
  if cfg['jitter_prob'] > 0:
    bright = lambda y: adjust_brightness(y, p['brightness'])
    contrast = lambda y: adjust_contrast(y, p['contrast'])
    jittered = jnp.where(p['brightness_first'], contrast(bright(x)), bright(contrast(x)))
    x = jnp.where(p['jitter'], jittered, x)
  if cfg['blur_prob'] > 0:
    blur = blur_matrix(p['sigma'], size, cfg['blur_kernel_size'])
    x = jnp.where(p['blur'], blur @ x @ blur.T, x)
  if cfg['solarize_prob'] > 0:
    flip = p['solarize'] & (x * 255.0 >= cfg['solarize_threshold'] - 1e-3)
    x = jnp.where(flip, 1.0 - x, x)
  return x


def normalize(x: jax.Array, mean, std, dtype=jnp.float32) -> jax.Array:
  """(..., H, W) grey in [0, 1] -> (..., H, W, 3) with per-channel mean and std."""
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  return ((x[..., None] - mean) / std).astype(dtype)


def view_draws(seed: int, positions: jax.Array, view: int) -> jax.Array:
  """(B, VIEW_DRAWS) uniforms of `view` for the examples at stream `positions`."""
  base = jax.random.PRNGKey(seed)
  key = lambda position: jax.random.fold_in(jax.random.fold_in(base, position), view)
  return jax.vmap(lambda p: jax.random.uniform(key(p), (augment.VIEW_DRAWS,)))(positions)


def two_views(images: jax.Array, positions: jax.Array, *, seed: int, aug: Mapping[str, Any],
              size: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """{'view1', 'view2'} of pretraining from uint8 (B, H, W, 1) images and (B,) positions.

  `aug` is config.aug (augment.default_augment_config's fields); the result
  is two (B, size, size, 3) arrays in `dtype`, ImageNet-normalised.
  """
  aug = augment.as_dict(aug)
  grey = images[..., 0].astype(jnp.float32)
  views = []
  for view, cfg in enumerate((aug['view1'], aug['view2'])):
    draws = view_draws(seed, positions, view)
    x = jax.vmap(lambda image, u, cfg=cfg: augment_view(image, u, cfg, size))(grey, draws)
    views.append(normalize(x, aug['mean'], aug['std'], dtype))
  return views[0], views[1]
