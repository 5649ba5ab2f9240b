"""Localisation of saliency maps against bounding boxes (pure numpy/scipy).

Grad-CAM-style heatmaps are scored against the radiologists' boxes of
ChestX-ray8 / VinBig-CXR with the pointing game, a heatmap IoU and, for
EVA-X-style AP25/AP50, boxes read off the thresholded map.

Conventions:
  * A heatmap is a 2-D (H, W) array; rows are y, columns are x.
  * A box is (x, y, w, h) in the heatmap's pixel coordinates: x is the column
    of its left edge, y the row of its top edge, floats allowed, w, h > 0.
  * Pixel (r, c) covers [c, c + 1) x [r, r + 1); it belongs to a box when its
    centre (c + 0.5, r + 0.5) lies inside the closed box
    [x, x + w] x [y, y + h].
  * A map whose maximum is <= 0 holds no positive evidence (e.g. Grad-CAM
    after its ReLU when the class logit falls everywhere): a miss, IoU 0 and
    no boxes, rather than a region picked out of noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Box = tuple[float, float, float, float]


def _check_box(box, name: str = 'box') -> Box:
  """Returns `box` as four floats; raises unless finite with w, h > 0."""
  values = np.asarray(box, dtype=np.float64)
  if values.shape != (4,):
    raise ValueError(f'{name} must be (x, y, w, h), got {box!r}')
  if not np.all(np.isfinite(values)):
    raise ValueError(f'{name} must be finite, got {box!r}')
  if values[2] <= 0 or values[3] <= 0:
    raise ValueError(f'{name} needs width and height > 0, got {box!r}')
  return tuple(float(v) for v in values)


def _check_heatmap(heatmap) -> np.ndarray:
  heatmap = np.asarray(heatmap, dtype=np.float64)
  if heatmap.ndim != 2 or heatmap.size == 0:
    raise ValueError(f'heatmap must be a non-empty (H, W) array, got shape '
                     f'{heatmap.shape}')
  if not np.all(np.isfinite(heatmap)):
    raise ValueError('heatmap contains NaN or infinite values')
  return heatmap


def _check_threshold(threshold) -> float:
  if not 0 < threshold <= 1:
    raise ValueError('threshold is a fraction of the map maximum and must lie '
                     f'in (0, 1], got {threshold!r}')
  return float(threshold)


def box_mask(shape: Sequence[int], box) -> np.ndarray:
  """Boolean (H, W) mask of the pixels whose centre lies inside `box`.

  The box is closed, so a centre on its edge counts as inside; the box may
  reach past the image, which simply clips it.
  """
  if len(shape) != 2 or min(shape) < 0:
    raise ValueError(f'shape must be (H, W), got {shape!r}')
  x, y, w, h = _check_box(box)
  col_centres = np.arange(shape[1]) + 0.5
  row_centres = np.arange(shape[0]) + 0.5
  cols = (col_centres >= x) & (col_centres <= x + w)
  rows = (row_centres >= y) & (row_centres <= y + h)
  return rows[:, None] & cols[None, :]


def pointing_game_hit(heatmap, box, tolerance_px: float = 0) -> bool:
  """Whether the heatmap's maximum falls inside `box` grown by a tolerance.

  The box grows by `tolerance_px` on every side. When several pixels share
  the maximum, it is a hit if ANY of them is inside: the map does not tell
  them apart, so none of them is a wrong answer. A map with no positive
  evidence (maximum <= 0, including all zeros) is a miss.

  Args:
    heatmap: (H, W) saliency map; NaN or infinite values raise ValueError.
    box: (x, y, w, h) in the heatmap's pixel coordinates.
    tolerance_px: pixels (>= 0) added to each side of the box.
  """
  heatmap = _check_heatmap(heatmap)
  if not tolerance_px >= 0:
    raise ValueError(f'tolerance_px must be >= 0, got {tolerance_px!r}')
  x, y, w, h = _check_box(box)
  peak = heatmap.max()
  if peak <= 0:
    return False
  grown = (x - tolerance_px, y - tolerance_px,
           w + 2 * tolerance_px, h + 2 * tolerance_px)
  return bool(np.any((heatmap == peak) & box_mask(heatmap.shape, grown)))


def heatmap_iou(heatmap, box, threshold: float) -> float:
  """IoU of the pixels >= `threshold` * max and the pixels inside `box`.

  Args:
    heatmap: (H, W) saliency map.
    box: (x, y, w, h) in the heatmap's pixel coordinates.
    threshold: a fraction (0, 1] of the map's maximum.

  Returns:
    The IoU of the two pixel sets; 0.0 for a map with no positive evidence.
  """
  heatmap = _check_heatmap(heatmap)
  threshold = _check_threshold(threshold)
  inside = box_mask(heatmap.shape, box)
  peak = heatmap.max()
  if peak <= 0:
    return 0.0
  predicted = heatmap >= threshold * peak
  union = np.sum(predicted | inside)  # >= 1: the peak pixel is predicted
  return float(np.sum(predicted & inside) / union)


def connected_boxes(heatmap, threshold: float) -> list[tuple[Box, float]]:
  """Boxes around the 8-connected regions of the map >= `threshold` * max.

  Each box is the tight pixel box of one region, (x, y, w, h) with integer
  edges, so `box_mask` of it gives back the region's bounding pixels. Its
  score is the peak value inside the region.

  Returns:
    [((x, y, w, h), peak), ...] sorted by peak, highest first (ties keep the
    raster order of the regions); [] for a map with no positive evidence.
  """
  heatmap = _check_heatmap(heatmap)
  threshold = _check_threshold(threshold)
  peak = heatmap.max()
  if peak <= 0:
    return []
  regions, count = ndimage.label(heatmap >= threshold * peak,
                                 structure=np.ones((3, 3), dtype=bool))
  peaks = ndimage.maximum(heatmap, regions, index=np.arange(1, count + 1))
  boxes = []
  for (rows, cols), region_peak in zip(ndimage.find_objects(regions), peaks):
    boxes.append(((float(cols.start), float(rows.start),
                   float(cols.stop - cols.start), float(rows.stop - rows.start)),
                  float(region_peak)))
  order = np.argsort([-p for _, p in boxes], kind='stable')
  return [boxes[i] for i in order]


def box_iou(a, b) -> float:
  """IoU of two (x, y, w, h) boxes in continuous coordinates."""
  ax, ay, aw, ah = _check_box(a, 'a')
  bx, by, bw, bh = _check_box(b, 'b')
  overlap_w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
  overlap_h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
  overlap = overlap_w * overlap_h
  return overlap / (aw * ah + bw * bh - overlap)


def _match_image(predictions, truths, iou_threshold: float) -> list:
  """[(score, is_true_positive)] of one image, greedy in score order."""
  scored = [(float(score), _check_box(box, 'prediction box'))
            for box, score in predictions]
  if not all(np.isfinite(score) for score, _ in scored):
    raise ValueError('predictions hold a non-finite score')
  truths = [_check_box(box, 'truth box') for box in truths]
  matched = [False] * len(truths)
  outcomes = []
  for score, box in sorted(scored, key=lambda sb: -sb[0]):  # stable for ties
    best, best_iou = -1, -np.inf
    for t, truth in enumerate(truths):
      if matched[t]:
        continue
      iou = box_iou(box, truth)
      if iou >= iou_threshold and iou > best_iou:  # strict: first truth on ties
        best, best_iou = t, iou
    if best >= 0:
      matched[best] = True
    outcomes.append((score, best >= 0))
  return outcomes


def average_precision(predictions: Sequence[Sequence[tuple]],
                      truths: Sequence[Sequence], iou_threshold: float) -> float:
  """Detection AP over a set of images (AP25 / AP50 at 0.25 / 0.5).

  In each image, predictions are taken in score order and each claims the
  unmatched truth with the highest box IoU >= `iou_threshold` (the first such
  truth on an exact IoU tie); one that claims none is a false positive, so a
  second box on a found lesion counts against the model. The outcomes of all
  images are then ranked by score (ties: image order, then score order within
  the image, as COCO's stable sort does) and AP is the area under the
  precision-recall curve with all-points interpolation: precision at each
  recall is the best precision at that recall or beyond (VOC 2010+).

  Args:
    predictions: per image, a list of ((x, y, w, h), score).
    truths: per image, a list of (x, y, w, h).
    iou_threshold: in (0, 1].

  Returns:
    AP in [0, 1]; 0.0 without predictions, NaN when there are no truths.
  """
  if len(predictions) != len(truths):
    raise ValueError(f'predictions cover {len(predictions)} images and truths '
                     f'{len(truths)}; they must cover the same images')
  if not 0 < iou_threshold <= 1:
    raise ValueError(f'iou_threshold must lie in (0, 1], got {iou_threshold!r}')
  outcomes = []
  for image_predictions, image_truths in zip(predictions, truths):
    outcomes.extend(_match_image(image_predictions, image_truths, iou_threshold))
  n_truths = sum(len(t) for t in truths)
  if n_truths == 0:
    return float('nan')
  if not outcomes:
    return 0.0
  order = np.argsort([-score for score, _ in outcomes], kind='stable')
  hits = np.array([outcomes[i][1] for i in order], dtype=np.float64)
  true_positives = np.cumsum(hits)
  precision = true_positives / np.arange(1, hits.size + 1)
  recall = true_positives / n_truths
  # Monotone precision envelope over the recall steps.
  precision = np.concatenate([[0.0], precision, [0.0]])
  recall = np.concatenate([[0.0], recall, [1.0]])
  precision = np.maximum.accumulate(precision[::-1])[::-1]
  steps = np.flatnonzero(recall[1:] != recall[:-1])
  return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))
