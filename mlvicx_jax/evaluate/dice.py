"""Segmentation metrics (SIIM-ACR): three Dice and their empty-prediction floors.

The paper reports "Dice" without a definition, and the definitions differ
most where SIIM differs from other tasks: most images have no pneumothorax.
Per image, [|P & T|, |P|, |T|] (`dice_counts`, threshold 0.5) is all any of
them needs, so evaluation keeps counts, never masks.
"""

from __future__ import annotations

import numpy as np


def dice_counts(pred_masks, true_masks, threshold: float = 0.5) -> np.ndarray:
  """(N, 3) per image: [|P & T|, |P|, |T|], the sufficient statistics of every Dice.

  Collected batch by batch, they give the three Dice of `dice_summary`
  without keeping any mask.
  """
  pred = np.asarray(pred_masks)
  true = np.asarray(true_masks)
  if pred.shape != true.shape:
    raise ValueError(f'pred_masks {pred.shape} and true_masks {true.shape} '
                     'must have one shape')
  n = pred.shape[0]
  pred = (pred > threshold).reshape(n, -1)
  true = (true >= 0.5).reshape(n, -1)
  return np.stack([np.sum(pred & true, axis=1), np.sum(pred, axis=1),
                   np.sum(true, axis=1)], axis=1).astype(np.float64)


def dice_summary(counts) -> dict:
  """The three Dice of a split from its `dice_counts`.

  dice:            global Dice, 2 sum|P & T| / (sum|P| + sum|T|) over all
                   pixels of the split (1 when both sums are 0).
  dice_positive:   mean per-image Dice over images whose truth is non-empty
                   (NaN when there are none).
  dice_per_image:  mean per-image Dice over all images, an empty prediction
                   on an empty truth counting 1 (SIIM's Kaggle metric).
  """
  counts = np.asarray(counts, np.float64)
  if counts.ndim != 2 or counts.shape[1] != 3 or not len(counts):
    raise ValueError(f'counts must have shape (N > 0, 3), got {counts.shape}')
  inter, pred, true = counts.T
  total = pred + true
  with np.errstate(divide='ignore', invalid='ignore'):
    per_image = np.where(total > 0, 2 * inter / total, 1.0)
  pooled = total.sum()
  positive = true > 0
  return {'dice': float(2 * inter.sum() / pooled) if pooled > 0 else 1.0,
          'dice_positive': float(per_image[positive].mean()) if positive.any() else float('nan'),
          'dice_per_image': float(per_image.mean())}


def empty_prediction_floors(counts) -> dict:
  """`dice_summary` of a model that predicts no foreground on the same images."""
  counts = np.asarray(counts, np.float64).copy()
  counts[:, :2] = 0.0
  return dice_summary(counts)
