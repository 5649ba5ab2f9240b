"""SIIM-ACR run-length encoding.

SIIM's `train-rle.csv` stores each mask as pairs "gap length gap length ...":
every start is an offset from the end of the previous run (not an absolute
position), over the image flattened column by column (Fortran order), as in
the competition's own `mask_functions.py`. "-1" means an empty mask.
"""
from __future__ import annotations

import numpy as np


class RLEError(ValueError):
  """A run-length string that cannot describe a mask of the given shape."""


def is_empty_rle(rle: str) -> bool:
  return rle.strip() in ('-1', '')


def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
  """Decodes a SIIM relative RLE string into a (height, width) uint8 0/1 mask.

  Raises RLEError for a string that is not pairs of non-negative integers or
  whose runs leave the image, so callers can skip and report the row.
  """
  if is_empty_rle(rle):
    return np.zeros((height, width), np.uint8)
  try:
    values = np.array([int(token) for token in rle.split()], np.int64)
  except ValueError as e:
    raise RLEError(f'non-integer token in RLE: {e}') from None
  if values.size % 2:
    raise RLEError(f'odd number of values ({values.size}) in RLE')
  gaps, lengths = values[0::2], values[1::2]
  if (gaps < 0).any() or (lengths < 0).any():
    raise RLEError('negative gap or length in RLE')
  # Absolute start of run i: sum of all gaps and lengths before it, plus gap i.
  starts = np.cumsum(gaps) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
  ends = starts + lengths
  if ends.size and ends[-1] > height * width:
    raise RLEError(
        f'RLE runs end at pixel {ends[-1]}, beyond a {height}x{width} image')
  flat = np.zeros(height * width + 1, np.int32)
  np.add.at(flat, starts, 1)
  np.add.at(flat, ends, -1)
  flat = (np.cumsum(flat[:-1]) > 0).astype(np.uint8)
  return flat.reshape((height, width), order='F')


def rle_encode(mask: np.ndarray) -> str:
  """Encodes a 2-D mask (nonzero = inside) as SIIM relative RLE; '-1' if empty."""
  flat = (np.asarray(mask).reshape(-1, order='F') > 0).astype(np.int8)
  edges = np.diff(np.concatenate([[0], flat, [0]]))
  starts = np.flatnonzero(edges == 1)
  ends = np.flatnonzero(edges == -1)
  if starts.size == 0:
    return '-1'
  previous_ends = np.concatenate([[0], ends[:-1]])
  gaps = starts - previous_ends
  pairs = np.stack([gaps, ends - starts], axis=1).reshape(-1)
  return ' '.join(str(v) for v in pairs)
