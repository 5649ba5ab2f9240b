"""Barlow Twins loss (Zbontar, Jing, Misra, LeCun and Deny, ICML 2021).

Each view is standardised per dimension over the batch, as the paper's code
does with a non-affine BatchNorm in training mode (batch mean, biased
variance, eps 1e-5). The D x D cross-correlation of the two views is pushed
towards the identity. The statistics and the correlation cover the whole
batch the function is given: under `jax.jit` with the batch sharded across
devices they are global, as with the paper's synchronised BatchNorm and
all-reduce; no axis names are needed.
"""

from typing import Any

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]

_HIGHEST = jax.lax.Precision.HIGHEST
_BATCH_NORM_EPS = 1e-5  # torch.nn.BatchNorm1d's default, used by the paper.


def _standardise(z: jax.Array) -> jax.Array:
  """Non-affine training-mode BatchNorm: (z - mean) / sqrt(biased var + eps)."""
  centred = z - jnp.mean(z, axis=0, keepdims=True)
  variance = jnp.mean(jnp.square(centred), axis=0, keepdims=True)
  return centred * jax.lax.rsqrt(variance + _BATCH_NORM_EPS)


def barlow_twins_loss(
    z1: Any, z2: Any, lambd: float = 0.0051) -> tuple[jax.Array, Metrics]:
  """Barlow Twins: sum_i (1 - c_ii)^2 + lambd * sum_{i != j} c_ij^2.

  c = z1n^T z2n / N with z1n, z2n the batch-standardised views. On collapse
  (zero variance) the views standardise to ~0, c ~ 0 and the loss ~D: finite,
  thanks to the eps.

  Args:
    z1: view-1 projections, shape (N, D), N >= 2.
    z2: view-2 projections of the same examples, same shape.
    lambd: weight of the redundancy-reduction (off-diagonal) term.

  Returns:
    (loss, metrics): a scalar in at least float32, and float32 `loss`,
    `on_diagonal` (sum_i (1 - c_ii)^2) and `off_diagonal`
    (sum_{i != j} c_ij^2, before lambd).
  """
  z1, z2 = jnp.asarray(z1), jnp.asarray(z2)
  if z1.shape != z2.shape:
    raise ValueError(
        f'barlow_twins_loss: z1 and z2 must have the same shape, got '
        f'{z1.shape} and {z2.shape}.')
  if z1.ndim != 2:
    raise ValueError(
        f'barlow_twins_loss: z1 must have shape (N, D), got shape {z1.shape}.')
  if z1.shape[0] < 2:
    raise ValueError(
        f'barlow_twins_loss: z1 has batch size {z1.shape[0]}; batch '
        'standardisation needs at least 2 examples.')
  dtype = jnp.promote_types(jnp.result_type(z1, z2), jnp.float32)
  n, d = z1.shape
  z1n = _standardise(z1.astype(dtype))
  z2n = _standardise(z2.astype(dtype))

  c = jnp.matmul(z1n.T, z2n, precision=_HIGHEST) / n
  is_diagonal = jnp.arange(d)[:, None] == jnp.arange(d)[None, :]
  on_diagonal = jnp.sum(jnp.square(1.0 - jnp.diagonal(c)))
  # A mask, not sum(c^2) - sum(diag^2): the diagonal (~1 each) would swamp
  # a small off-diagonal sum in float32.
  off_diagonal = jnp.sum(jnp.square(jnp.where(is_diagonal, 0.0, c)))

  loss = on_diagonal + lambd * off_diagonal
  metrics = {
      'loss': loss,
      'on_diagonal': on_diagonal,
      'off_diagonal': off_diagonal,
  }
  return loss, {name: value.astype(jnp.float32)
                for name, value in metrics.items()}
