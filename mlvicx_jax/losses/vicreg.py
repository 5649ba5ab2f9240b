"""VICReg loss (Bardes, Ponce and LeCun, ICLR 2022) and MLVICX's two-branch sum.

The statistics (means, variances, covariances) are taken over the whole batch
that the function is given. Under `jax.jit` with a batch sharded across
devices that is the global batch, which is what VICReg's all-gather does in
PyTorch; no collective axis names are needed.
"""

from typing import Any

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]

_HIGHEST = jax.lax.Precision.HIGHEST


def _as_batch_matrix(z: Any, name: str) -> jax.Array:
  """Flattens `z` to (N, D) in at least float32 (bf16 sums lose the signal)."""
  z = jnp.asarray(z)
  if z.ndim < 2:
    raise ValueError(
        f'vicreg_loss: {name} needs a batch axis and feature axes, got shape '
        f'{z.shape}.')
  if z.shape[0] < 2:
    raise ValueError(
        f'vicreg_loss: {name} has batch size {z.shape[0]}; the unbiased '
        'variance needs at least 2 examples.')
  dtype = jnp.promote_types(z.dtype, jnp.float32)
  return z.reshape(z.shape[0], -1).astype(dtype)


def _variance_and_covariance_terms(
    z: jax.Array, eps: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns (variance term, covariance term, mean std) of one view.

  The covariance term is sum(offdiag(C)^2) / D with C the unbiased covariance.
  sum(C^2) equals the squared Frobenius norm of the N x N Gram matrix of the
  centred batch, so when N <= D this costs O(N^2 D) instead of O(N D^2) and
  never builds the D x D matrix (D = 4096 in MLVICX, N is the batch). The
  diagonal of C is the per-dimension variance, already needed for the
  variance term. Subtracting it only loses float32 accuracy when the diagonal
  dominates, i.e. N well above D with nearly decorrelated features; there
  the absolute error stays near float32 epsilon times sum(C^2) / D.
  """
  n, d = z.shape
  centred = z - jnp.mean(z, axis=0, keepdims=True)
  variance = jnp.sum(jnp.square(centred), axis=0) / (n - 1)
  std = jnp.sqrt(variance + eps)
  variance_term = jnp.mean(jax.nn.relu(1.0 - std))

  if n <= d:
    gram = jnp.matmul(centred, centred.T, precision=_HIGHEST) / (n - 1)
  else:
    gram = jnp.matmul(centred.T, centred, precision=_HIGHEST) / (n - 1)
  off_diagonal_sq = jnp.sum(jnp.square(gram)) - jnp.sum(jnp.square(variance))
  covariance_term = jnp.maximum(off_diagonal_sq, 0.0) / d

  # Monitor only: plain std (no eps), cut from the graph so sqrt(0) is safe.
  mean_std = jnp.mean(jnp.sqrt(jax.lax.stop_gradient(variance)))
  return variance_term, covariance_term, mean_std


def vicreg_loss(
    z1: Any,
    z2: Any,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
) -> tuple[jax.Array, Metrics]:
  """VICReg loss between two batches of embeddings of the same examples.

  Args:
    z1: embeddings of view 1, shape (N, ...); trailing axes are flattened.
    z2: embeddings of view 2, same shape as `z1`.
    sim_coeff: weight of the invariance term (VICReg's lambda).
    std_coeff: weight of the variance term (mu).
    cov_coeff: weight of the covariance term (nu).
    eps: added to the variance before the square root.

  Returns:
    (loss, metrics): a float32 scalar, and the UNWEIGHTED terms `inv`, `var`,
    `cov`, plus `std`, the mean per-dimension standard deviation (without
    eps) averaged over both views, which drops to 0 when embeddings collapse.
  """
  if jnp.shape(z1) != jnp.shape(z2):
    raise ValueError(
        f'vicreg_loss: z1 and z2 must have the same shape, got '
        f'{jnp.shape(z1)} and {jnp.shape(z2)}.')
  x1 = _as_batch_matrix(z1, 'z1')
  x2 = _as_batch_matrix(z2, 'z2')

  invariance = jnp.mean(jnp.square(x1 - x2))
  var1, cov1, std1 = _variance_and_covariance_terms(x1, eps)
  var2, cov2, std2 = _variance_and_covariance_terms(x2, eps)
  variance = (var1 + var2) / 2
  covariance = cov1 + cov2

  loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
  metrics = {
      'inv': invariance,
      'var': variance,
      'cov': covariance,
      'std': (std1 + std2) / 2,
  }
  return loss, metrics


def mlvicx_loss(
    z1: Any,
    z2: Any,
    m1: Any,
    m2: Any,
    *,
    lam: float = 1.0,
    use_global: bool = True,
    use_local: bool = True,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
) -> tuple[jax.Array, Metrics]:
  """MLVICX loss: L_G(z1, z2) + lam * L_L(m1, m2), both VICReg.

  `use_global` / `use_local` give the paper's ablations (L_L only is
  lam * L_L). The embeddings of a branch that is switched off are not read
  and may be None.

  Returns:
    (loss, metrics): metrics has 'loss' and, for each branch in use,
    '<branch>/inv', '/var', '/cov', '/std' (unweighted) and '<branch>/loss'
    (that branch's VICReg loss, before lam), branch being 'global' or
    'local'.
  """
  if not (use_global or use_local):
    raise ValueError(
        'mlvicx_loss: use_global and use_local are both False; at least one '
        'loss branch must be on.')
  if isinstance(lam, (int, float)) and lam < 0:
    raise ValueError(f'mlvicx_loss: lam must be >= 0, got {lam}.')

  coeffs = dict(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff,
                eps=eps)
  loss = jnp.zeros((), jnp.float32)
  metrics = {}
  for branch, used, a, b, weight in (('global', use_global, z1, z2, 1.0),
                                     ('local', use_local, m1, m2, lam)):
    if not used:
      continue
    branch_loss, branch_metrics = vicreg_loss(a, b, **coeffs)
    loss = loss + weight * branch_loss
    metrics[f'{branch}/loss'] = branch_loss
    for key, value in branch_metrics.items():
      metrics[f'{branch}/{key}'] = value
  metrics['loss'] = loss
  return loss, metrics
