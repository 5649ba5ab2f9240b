"""Grad-CAM maps of a classifier or an encoder (pure functions over an apply_fn).

Grad-CAM (Selvaraju et al. 2017) at a ResNet level: with A the map (h, w, C)
and y the explained score, channel weights a_c = mean_hw dy/dA_c,
map = ReLU(sum_c a_c A_c), bilinearly upsampled to the image size. For a
global-average-pool + linear classifier at the last stage this equals CAM:
ReLU(A W_k) / (h w). When the score falls everywhere the ReLU leaves an
all-zero map: no positive evidence, which callers must say, not draw.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Where the map is taken: 'layer4' is 7 x 7 at 224 px, 'layer3' 14 x 14 (NIH's
# nodule boxes are smaller than one layer4 cell).
CAM_LAYERS = {'layer4': -1, 'layer3': -2}


def cam_level(cam_layer: str) -> int:
  """The ResNet map index (`maps[level]`) of a CAM_LAYERS name."""
  if cam_layer not in CAM_LAYERS:
    raise ValueError(f'cam_layer must be one of {tuple(CAM_LAYERS)}, got {cam_layer!r}')
  return CAM_LAYERS[cam_layer]


def has_positive_evidence(maps) -> np.ndarray:
  """(N,) bool: False where a Grad-CAM map is all zero (the score fell everywhere)."""
  maps = np.asarray(maps)
  return maps.reshape(len(maps), -1).max(axis=1) > 0


# apply_fn(variables, images, map_delta) -> (scores (N, K), feature_map (N, h, w, C)).
# The returned map must already include `map_delta` (added to the map the
# scores are computed from), so that d scores / d map_delta = d scores / d map.
CamApplyFn = Callable[[Any, jax.Array, Any], tuple[jax.Array, jax.Array]]


def gradcam(apply_fn: CamApplyFn, variables, images, class_index,
            output_size: Sequence[int] | None = None) -> tuple[jax.Array, jax.Array]:
  """Grad-CAM maps of `class_index` for each image.

  Args:
    apply_fn: see `CamApplyFn`; images must be independent of each other
      (inference-mode BatchNorm), since gradients of the summed scores are used.
    variables: passed to apply_fn unchanged.
    images: (N, H, W, C) model inputs.
    class_index: int, or (N,) ints, the score column explained per image.
    output_size: (height, width) of the returned maps; default (H, W).

  Returns:
    (maps (N, height, width) float32, unnormalised and >= 0; scores (N, K)).
  """
  images = jnp.asarray(images)
  scores, feature_map = apply_fn(variables, images, 0.0)
  index = jnp.broadcast_to(jnp.asarray(class_index, jnp.int32), scores.shape[:1])

  def explained(map_delta):
    s, _ = apply_fn(variables, images, map_delta)
    return jnp.take_along_axis(s, index[:, None], axis=1).sum()

  grads = jax.grad(explained)(jnp.zeros(feature_map.shape, jnp.float32))
  weights = grads.mean(axis=(1, 2))  # (N, C)
  cam = jax.nn.relu(jnp.einsum('nhwc,nc->nhw', feature_map.astype(jnp.float32), weights))
  height, width = output_size if output_size is not None else images.shape[1:3]
  cam = jax.image.resize(cam, (cam.shape[0], height, width), method='bilinear',
                         antialias=False)
  return jnp.maximum(cam, 0.0), scores


def normalize_maps(maps) -> np.ndarray:
  """Scales each map to [0, 1] for display (an all-zero map stays zero)."""
  maps = np.asarray(maps, np.float32)
  peak = maps.reshape(len(maps), -1).max(axis=1)
  return maps / np.where(peak > 0, peak, 1.0)[:, None, None]


# --- models and checkpoints ---------------------------------------------------------


def classifier_apply_fn(model, cam_layer: str = 'layer4') -> CamApplyFn:
  """The CamApplyFn of a `models.Classifier` (scores = logits) at `cam_layer`."""
  level = cam_level(cam_layer)

  def apply_fn(variables, images, map_delta):
    return model.apply(variables, images, train=False, map_delta=map_delta,
                       return_map=True, map_level=level)
  return apply_fn


def encoder_apply_fn(backbone, cam_layer: str = 'layer4') -> CamApplyFn:
  """A pretrained trunk: one score, the squared norm of the pooled features."""
  level = cam_level(cam_layer)

  def apply_fn(variables, images, map_delta):
    out = backbone.apply(variables, images, train=False,
                         deltas={level % (len(backbone.stage_sizes) + 1): map_delta})
    return jnp.sum(out['features']**2, axis=1, keepdims=True), out['maps'][level]
  return apply_fn
