"""Scores saliency maps against radiologists' boxes: per finding and overall, with intervals.

One item per box: the image it is on, its finding, the box (x, y, w, h in the
map's pixels) and the map that explains that image's logit for that finding.
Per box: the pointing game (tolerance in map pixels) and the IoU of the map
thresholded at each fraction of its maximum. Per (image, finding): boxes
around the connected regions of the map >= `ap_map_threshold` x max, scored
by their peak, give AP at box IoU 0.25 and 0.5 (AP25, AP50, as EVA-X reports
them) and mIoU, the mean over truth boxes of the best box IoU any region
reaches (0 when there is none). A map with no positive evidence is a miss in
every metric and is counted. Intervals: percentile bootstrap over images.
"""
from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import numpy as np

from mlvicx_jax.evaluate import localisation as loc

AP_IOUS = (0.25, 0.5)


@dataclasses.dataclass(frozen=True)
class Item:
  image: int       # index of the image among the scored ones
  finding: int     # class index
  box: tuple       # (x, y, w, h) in the map's pixels
  heatmap: np.ndarray


def centre_prior(height: int, width: int, sigma_fraction: float = 0.25) -> np.ndarray:
  """What no information scores: a Gaussian at the image centre (sd a fraction of the side)."""
  rows = (np.arange(height) + 0.5 - height / 2) / (sigma_fraction * height)
  cols = (np.arange(width) + 0.5 - width / 2) / (sigma_fraction * width)
  return np.exp(-0.5 * (rows[:, None]**2 + cols[None, :]**2))


def _per_box(items: Sequence[Item], iou_thresholds, tolerance_px: float) -> dict:
  return {
      'hit': np.array([loc.pointing_game_hit(i.heatmap, i.box, tolerance_px) for i in items],
                      np.float64),
      'iou': np.array([[loc.heatmap_iou(i.heatmap, i.box, t) for t in iou_thresholds]
                       for i in items], np.float64).reshape(len(items), len(iou_thresholds)),
      'evidence': np.array([float(np.max(i.heatmap)) > 0 for i in items]),
  }


def _groups(items: Sequence[Item], ap_map_threshold: float) -> list[dict]:
  """One entry per (image, finding): predicted region boxes and the truth boxes."""
  grouped = {}
  for item in items:
    key = (item.image, item.finding)
    if key not in grouped:
      grouped[key] = {'image': item.image, 'finding': item.finding, 'truths': [],
                      'predictions': loc.connected_boxes(item.heatmap, ap_map_threshold)}
    grouped[key]['truths'].append(item.box)
  return list(grouped.values())


def _box_metrics(groups: Sequence[dict]) -> dict:
  out = {}
  for iou in AP_IOUS:
    out[f'ap{round(iou * 100)}'] = (
        loc.average_precision([g['predictions'] for g in groups],
                              [g['truths'] for g in groups], iou) if groups else float('nan'))
  best = [max((loc.box_iou(t, p) for p, _ in g['predictions']), default=0.0)
          for g in groups for t in g['truths']]
  out['miou'] = float(np.mean(best)) if best else float('nan')
  return out


def _summary(per_box: dict, groups: Sequence[dict], iou_thresholds) -> dict:
  out = {'pointing_game': float(per_box['hit'].mean()) if len(per_box['hit']) else float('nan')}
  for k, t in enumerate(iou_thresholds):
    out[f'iou@{t:g}'] = float(per_box['iou'][:, k].mean()) if len(per_box['hit']) else float('nan')
  out.update(_box_metrics(groups))
  return out


def score(items: Sequence[Item], class_names: Sequence[str], *,
          iou_thresholds: Sequence[float] = (0.25, 0.5, 0.75), tolerance_px: float = 0.0,
          ap_map_threshold: float = 0.5, n_boot: int = 1000, seed: int = 0) -> dict:
  """Per finding and overall metrics, their bootstrap 95% intervals and counts."""
  iou_thresholds = tuple(float(t) for t in iou_thresholds)
  images = np.array([i.image for i in items])
  findings = np.array([i.finding for i in items])
  per_box = _per_box(items, iou_thresholds, tolerance_px)
  groups = _groups(items, ap_map_threshold)

  def subset(box_rows, chosen_groups):
    return ({k: v[box_rows] for k, v in per_box.items()}, chosen_groups)

  def cell(box_mask, group_filter) -> dict:
    rows = np.flatnonzero(box_mask)
    chosen = [g for g in groups if group_filter(g)]
    value = _summary(*subset(rows, chosen), iou_thresholds)
    value.update(num_boxes=int(rows.size), num_images=int(np.unique(images[rows]).size),
                 no_positive_evidence=int((~per_box['evidence'][rows]).sum()))
    value['ci95'] = _bootstrap(rows, chosen, n_boot, seed)
    return value

  def _bootstrap(rows, chosen, n_boot, seed):
    if n_boot <= 0 or rows.size == 0:
      return None
    rng = np.random.default_rng(seed)
    by_image = {}
    for r in rows:
      by_image.setdefault(int(images[r]), []).append(r)
    groups_by_image = {}
    for g in chosen:
      groups_by_image.setdefault(g['image'], []).append(g)
    ids = np.array(sorted(by_image))
    draws = []
    for _ in range(n_boot):
      pick = rng.choice(ids, size=ids.size, replace=True)
      boot_rows = np.concatenate([by_image[i] for i in pick])
      boot_groups = [g for i in pick for g in groups_by_image.get(i, [])]
      draws.append(_summary(*subset(boot_rows, boot_groups), iou_thresholds))
    return {k: [float(np.nanpercentile([d[k] for d in draws], 2.5)),
                float(np.nanpercentile([d[k] for d in draws], 97.5))] for k in draws[0]}

  per_finding = {}
  for k in sorted(set(findings.tolist())):
    per_finding[class_names[k]] = cell(findings == k, lambda g, k=k: g['finding'] == k)
  return {'overall': cell(np.ones(len(items), bool), lambda g: True),
          'per_finding': per_finding,
          'settings': {'iou_thresholds': list(iou_thresholds), 'tolerance_px': tolerance_px,
                       'ap_map_threshold': ap_map_threshold, 'ap_ious': list(AP_IOUS),
                       'n_boot': n_boot}}
