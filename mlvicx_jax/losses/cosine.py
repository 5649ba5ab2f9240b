"""Predictor-target cosine losses: BYOL and SimSiam.

BYOL (Grill et al., NeurIPS 2020) and SimSiam (Chen and He, CVPR 2021) both
pull an online prediction p towards a target projection z that gets no
gradient: BYOL's z comes from the momentum encoder, SimSiam's stop-gradient
is what prevents collapse. Each function scores ONE direction (p of view 1
against z of view 2); the caller symmetrises by adding the swapped call
(BYOL) or averaging the two (SimSiam).
"""

from typing import Any

import jax
import jax.numpy as jnp

from mlvicx_jax.losses.contrastive import l2_normalize

Metrics = dict[str, jax.Array]


def _cosine_and_metrics(
    fn: str, p: Any, z: Any) -> tuple[jax.Array, Metrics]:
  """Per-row cos(p, stop_gradient(z)) and the shared metrics."""
  p, z = jnp.asarray(p), jnp.asarray(z)
  if p.ndim != 2 or p.shape[0] < 1:
    raise ValueError(
        f'{fn}: p must have shape (N, D) with N >= 1, got shape {p.shape}.')
  if z.shape != p.shape:
    raise ValueError(
        f'{fn}: p and z must have the same shape, got {p.shape} and '
        f'{z.shape}.')
  dtype = jnp.promote_types(jnp.result_type(p, z), jnp.float32)
  p_unit = l2_normalize(p.astype(dtype))
  z_unit = jax.lax.stop_gradient(l2_normalize(z.astype(dtype)))
  cosine = jnp.sum(p_unit * z_unit, axis=-1)
  # SimSiam's collapse monitor: per-dimension std of z/||z|| over the batch
  # is ~1/sqrt(D) for spread-out outputs and 0 on collapse. Population std
  # (ddof 0), so a batch of 1 is defined.
  std = jnp.mean(jnp.std(z_unit, axis=0))
  metrics = {'cosine': jnp.mean(cosine), 'std': std}
  return cosine, metrics


def byol_loss(p: Any, z: Any) -> tuple[jax.Array, Metrics]:
  """BYOL: mean over the batch of 2 - 2 cos(p, stop_gradient(z)).

  Equal to ||p/||p|| - z/||z||||^2 for nonzero rows. Rows are normalised as
  x / max(||x||, 1e-12), so a zero row has cosine 0 instead of NaN.

  Args:
    p: online predictions, shape (N, D).
    z: target projections for the same examples, same shape; no gradient.

  Returns:
    (loss, metrics): a scalar in [0, 4], and float32 `loss`, `cosine` (mean
    cosine) and `std` (mean per-dimension std of z/||z||).
  """
  cosine, metrics = _cosine_and_metrics('byol_loss', p, z)
  loss = jnp.mean(2.0 - 2.0 * cosine)
  metrics = {'loss': loss, **metrics}
  return loss, {name: value.astype(jnp.float32)
                for name, value in metrics.items()}


def simsiam_loss(p: Any, z: Any) -> tuple[jax.Array, Metrics]:
  """SimSiam: mean over the batch of -cos(p, stop_gradient(z)).

  Args:
    p: predictor outputs, shape (N, D).
    z: projections of the other view, same shape; no gradient.

  Returns:
    (loss, metrics): a scalar in [-1, 1], and float32 `loss`, `cosine` and
    `std` as in `byol_loss`.
  """
  cosine, metrics = _cosine_and_metrics('simsiam_loss', p, z)
  loss = -jnp.mean(cosine)
  metrics = {'loss': loss, **metrics}
  return loss, {name: value.astype(jnp.float32)
                for name, value in metrics.items()}
