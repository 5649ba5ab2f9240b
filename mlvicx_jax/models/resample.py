"""Resampling as matrices, so linear chains of resampling can be composed.

The multi-level branch resizes every level to a common size and then
average-pools it to 4x4. Both steps are linear maps along each spatial axis,
so their product is one small matrix per level: applying it to the raw map
gives the same numbers as resizing and pooling, at a fraction of the cost.
"""
import functools

import numpy as np


@functools.lru_cache(maxsize=None)
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of 1-D bilinear resizing with half-pixel centres.

  Matches torch `F.interpolate(mode='bilinear', align_corners=False,
  antialias=False)`: source = (i + 0.5) * in/out - 0.5 clamped at 0, two taps.
  """
  out = np.arange(out_size, dtype=np.float64)
  src = np.maximum((out + 0.5) * (in_size / out_size) - 0.5, 0.0)
  lo = np.floor(src).astype(np.int64)
  lo = np.minimum(lo, in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = np.clip(src - lo, 0.0, 1.0)
  matrix = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, lo), 1.0 - frac)
  np.add.at(matrix, (rows, hi), frac)
  return matrix


@functools.lru_cache(maxsize=None)
def adaptive_avg_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of torch's AdaptiveAvgPool bins [floor(i*in/out), ceil((i+1)*in/out))."""
  matrix = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


@functools.lru_cache(maxsize=None)
def resize_then_pool_matrix(in_size: int, common_size: int,
                            pool_size: int) -> np.ndarray:
  """(pool, in) composition of bilinear resize to `common_size` and adaptive pooling."""
  return (adaptive_avg_pool_matrix(common_size, pool_size)
          @ bilinear_matrix(in_size, common_size))
