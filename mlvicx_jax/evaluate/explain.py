"""Where a trained classifier looks: Grad-CAM over the test split's boxed images.

For every image of the test split that has boxes (the others are counted,
not scored), the Grad-CAM map of the classifier's logit for each boxed
finding, upsampled to the classifier's input size, is scored against each
box of that finding (`localise.score`), beside a centre prior scored on the
same boxes. The best and the worst box by IoU of each finding are kept as
examples for the report's figures.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mlvicx_jax.evaluate import data as data_lib
from mlvicx_jax.evaluate import gradcam as cam
from mlvicx_jax.evaluate import localise

NIH_PNG_SIZE = 1024  # tolerance_px is given in the pixels of the released PNGs


def check_config(config) -> None:
  """config.localise, named field by field before anything trains."""
  settings = config.localise
  cam.cam_level(settings.cam_layer)
  if config.task != 'nih':
    raise ValueError(f"config.localise: boxes exist for task 'nih' only, not {config.task!r}")
  for t in settings.iou_thresholds:
    if not 0 < t <= 1:
      raise ValueError(f'config.localise.iou_thresholds: {t} is not a fraction in (0, 1]')
  if not 0 < settings.ap_map_threshold <= 1:
    raise ValueError('config.localise.ap_map_threshold must be in (0, 1], got '
                     f'{settings.ap_map_threshold}')
  if settings.tolerance_px < 0 or settings.centre_prior_sigma <= 0:
    raise ValueError('config.localise: tolerance_px must be >= 0 and centre_prior_sigma > 0')


def _box_images(data: data_lib.TaskData):
  """(positions in the test split, their stored boxes, number of test images)."""
  from mlvicx_jax.data import sources  # pylint: disable=g-import-not-at-top
  boxes = sources.boxes(data.data_dir, data.dataset, 'test')
  names = sources.file_names(data.data_dir, data.dataset, 'test')
  positions = np.array([i for i, n in enumerate(names) if n in boxes], np.int64)
  return positions, boxes, len(names), sources.stored_image_size(data.data_dir, data.dataset)


def _maps(config, data, model, variables, positions, boxes, class_of):
  """Yields (file name, gray image, {class: map}) for each boxed test image."""
  settings = config.localise
  apply_fn = cam.classifier_apply_fn(model, settings.cam_layer)
  cam_fn = jax.jit(lambda v, x, k: cam.gradcam(apply_fn, v, x, k))
  batches = data_lib.loader(config, data, 'test', train=False, indices=positions)
  for batch in batches:
    keep = np.asarray(batch['mask'], bool)
    images = np.asarray(batch['image'])[keep]
    for name, image in zip(data_lib.file_names(batch, keep), images):
      classes = sorted({class_of(c) for c in boxes[name][:, 4]} - {None})
      if not classes:
        continue
      stacked = jnp.asarray(np.repeat(image[None], len(classes), axis=0))
      maps, _ = cam_fn(variables, stacked, jnp.asarray(classes, jnp.int32))
      yield name, image, dict(zip(classes, np.asarray(maps, np.float64)))


def localisation_fields(config, data: data_lib.TaskData, model, variables) -> dict:
  """The record's `localisation` field, and example arrays for the report's figures."""
  settings = config.localise
  positions, boxes, num_test, stored = _box_images(data)
  class_names = list(data.class_names)
  # Box classes index the build's labels; the task may keep a subset of them.
  kept = (list(data.class_indices) if data.class_indices is not None
          else list(range(len(class_names))))
  class_of = lambda c: kept.index(int(c)) if int(c) in kept else None
  scale = config.image_size / stored
  tolerance = float(settings.tolerance_px) * config.image_size / NIH_PNG_SIZE
  items, images, maps_kept = [], {}, {}
  for index, (name, image, maps) in enumerate(
      _maps(config, data, model, variables, positions, boxes, class_of)):
    images[index] = (name, image)
    for x, y, w, h, c in boxes[name]:
      finding = class_of(c)
      if finding is None:
        continue
      items.append(localise.Item(index, finding, (x * scale, y * scale, w * scale, h * scale),
                                 maps[finding]))
      maps_kept[(index, finding)] = maps[finding]
  if not items:
    return {'localisation': {'num_test_images': num_test, 'num_box_images': 0,
                             'reason': 'no boxed finding of the classifier in the test split'}}, {}
  score = lambda scored: localise.score(
      scored, class_names, iou_thresholds=tuple(settings.iou_thresholds),
      tolerance_px=tolerance, ap_map_threshold=settings.ap_map_threshold,
      n_boot=settings.n_boot, seed=0)
  prior = localise.centre_prior(config.image_size, config.image_size, settings.centre_prior_sigma)
  record = {
      'cam_layer': settings.cam_layer, 'image_size': config.image_size,
      'tolerance_px': float(settings.tolerance_px), 'num_test_images': num_test,
      'num_box_images': len(images), 'not_scored_images': num_test - len(images),
      'classifier': score(items),
      'centre_prior': score([localise.Item(i.image, i.finding, i.box, prior) for i in items]),
  }
  return {'localisation': record}, _examples(items, images, settings)


def _examples(items, images, settings) -> dict:
  """Best and worst box by IoU (at the middle threshold) per finding, as arrays."""
  threshold = sorted(settings.iou_thresholds)[len(settings.iou_thresholds) // 2]
  from mlvicx_jax.evaluate import localisation as loc  # pylint: disable=g-import-not-at-top
  chosen = []
  for finding in sorted({i.finding for i in items}):
    scored = [(loc.heatmap_iou(i.heatmap, i.box, threshold), k)
              for k, i in enumerate(items) if i.finding == finding]
    scored.sort()
    chosen.append(scored[-1][1])  # the best, then the worst
    if settings.figures_per_finding >= 2 and len(scored) > 1:
      chosen.append(scored[0][1])
  pick = [items[k] for k in chosen]
  return {
      'loc_images': np.stack([_gray(images[i.image][1]) for i in pick]),
      'loc_maps': np.stack([i.heatmap for i in pick]).astype(np.float32),
      'loc_boxes': np.array([i.box for i in pick], np.float32),
      'loc_findings': np.array([i.finding for i in pick], np.int32),
      'loc_file_names': np.array([images[i.image][0] for i in pick], dtype=str),
      'loc_hits': np.array([loc.pointing_game_hit(i.heatmap, i.box) for i in pick]),
      'loc_iou': np.array([loc.heatmap_iou(i.heatmap, i.box, threshold) for i in pick],
                          np.float32),
  }


def _gray(image: np.ndarray) -> np.ndarray:
  """A normalised model input back to [0, 1] grey levels, for display only."""
  channel = np.asarray(image, np.float32)[..., 0]
  low, high = channel.min(), channel.max()
  return (channel - low) / (high - low) if high > low else np.zeros_like(channel)
