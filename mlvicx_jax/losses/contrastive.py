"""Contrastive comparison losses: SimCLR's NT-Xent and MoCo's InfoNCE.

SimCLR (Chen et al., ICML 2020) contrasts each embedding against the other
2N - 1 embeddings of the two views; MoCo (He et al., CVPR 2020; v2 Chen et
al. 2020) contrasts each query against its key and a queue of old keys.

Both take the cross-entropy of the positive's logit in the form
softplus(logsumexp_j(l_j - l_pos)) over the negatives j. It equals
logsumexp(all) - l_pos, but keeps float32 relative accuracy when the task is
nearly solved (loss ~1e-4), where that difference cancels.

The similarity matrix covers the whole batch the function is given: under
`jax.jit` with the batch sharded across devices, SimCLR's negatives are the
global batch (SimCLR's all-gather in PyTorch); no axis names are needed.
"""

from typing import Any

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]

_HIGHEST = jax.lax.Precision.HIGHEST
_NORM_EPS = 1e-12  # torch.nn.functional.normalize's default.


def _as_matrices(fn: str, **arrays: Any) -> list[jax.Array]:
  """Checks each array is (rows, D) and casts all to one float, >= float32."""
  arrays = {name: jnp.asarray(x) for name, x in arrays.items()}
  for name, x in arrays.items():
    if x.ndim != 2 or x.shape[0] < 1:
      raise ValueError(
          f'{fn}: {name} must have shape (rows, features) with rows >= 1, got '
          f'shape {x.shape}.')
  dtype = jnp.promote_types(jnp.result_type(*arrays.values()), jnp.float32)
  return [x.astype(dtype) for x in arrays.values()]


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / max(||x||, 1e-12) per row, as torch's F.normalize.

  The clamp sits under the square root so a zero row has a finite gradient.
  """
  squared_norm = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared_norm, _NORM_EPS**2))


def _cross_entropy_of_positive(
    negative_minus_positive: jax.Array,
    positive_cosine: jax.Array) -> tuple[jax.Array, Metrics]:
  """Mean over rows of -log softmax of the positive, with the shared metrics.

  Masked-out negatives hold -inf. `accuracy`: rows whose positive beat every
  negative.
  """
  per_row = jax.nn.softplus(
      jax.nn.logsumexp(negative_minus_positive, axis=-1))
  correct = jnp.max(negative_minus_positive, axis=-1) < 0
  loss = jnp.mean(per_row)
  metrics = {
      'loss': loss,
      'accuracy': jnp.mean(correct),
      'positive_similarity': jnp.mean(positive_cosine),
  }
  return loss, {name: value.astype(jnp.float32) for name, value in metrics.items()}


def simclr_loss(
    z1: Any, z2: Any, temperature: float = 0.1) -> tuple[jax.Array, Metrics]:
  """NT-Xent over the 2N embeddings of two views of N examples.

  Anchor i's positive is the other view of example i; its negatives are the
  2N - 2 other embeddings (both views), never itself.

  Args:
    z1: view-1 embeddings, shape (N, D), N >= 2; need not be normalised.
    z2: view-2 embeddings of the same examples, same shape.
    temperature: the softmax temperature tau.

  Returns:
    (loss, metrics): the cross-entropy averaged over the 2N anchors, and
    float32 `loss`, `accuracy` (fraction of anchors whose positive's logit is
    strictly above every negative's; 0 on collapse) and
    `positive_similarity` (mean cosine between the two views).
  """
  if jnp.shape(z1) != jnp.shape(z2):
    raise ValueError(
        f'simclr_loss: z1 and z2 must have the same shape, got '
        f'{jnp.shape(z1)} and {jnp.shape(z2)}.')
  x1, x2 = _as_matrices('simclr_loss', z1=z1, z2=z2)
  n = x1.shape[0]
  if n < 2:
    raise ValueError(
        f'simclr_loss: z1 has batch size {n}; an anchor needs at least one '
        'other example as a negative.')

  z = l2_normalize(jnp.concatenate([x1, x2], axis=0))
  # Row i's positive is row (i + N) mod 2N: the same example's other view.
  positive_cosine = jnp.sum(z * jnp.roll(z, n, axis=0), axis=-1)
  cosine = jnp.matmul(z, z.T, precision=_HIGHEST)
  row = jnp.arange(2 * n)[:, None]
  col = jnp.arange(2 * n)[None, :]
  is_negative = (col != row) & (col != (row + n) % (2 * n))
  differences = jnp.where(
      is_negative, (cosine - positive_cosine[:, None]) / temperature, -jnp.inf)
  return _cross_entropy_of_positive(differences, positive_cosine)


def moco_loss(
    q: Any, k: Any, queue: Any,
    temperature: float = 0.2) -> tuple[jax.Array, Metrics]:
  """MoCo's InfoNCE: each query against its key (positive) and the queue.

  logits = [q.k, q.queue^T] / temperature with the positive at index 0.
  The key and the queue come from the momentum encoder and get no gradient.

  Args:
    q: queries, shape (N, D); L2-normalised here.
    k: keys for the same examples, shape (N, D); L2-normalised here.
    queue: K negative keys, shape (K, D), K >= 1. Its rows are assumed
      ALREADY L2-normalised (MoCo enqueues normalised keys), and are not
      normalised again.
    temperature: the softmax temperature tau (0.2 in MoCo v2).

  Returns:
    (loss, metrics): the cross-entropy averaged over the N queries, and
    float32 `loss`, `accuracy` (fraction of queries whose key's logit is
    strictly above every queue logit) and `positive_similarity` (mean q.k).
  """
  if jnp.shape(q) != jnp.shape(k):
    raise ValueError(
        f'moco_loss: q and k must have the same shape, got {jnp.shape(q)} '
        f'and {jnp.shape(k)}.')
  q, k, queue = _as_matrices('moco_loss', q=q, k=k, queue=queue)
  if queue.shape[1] != q.shape[1]:
    raise ValueError(
        f'moco_loss: queue has width {queue.shape[1]} but q has '
        f'{q.shape[1]} features.')

  q = l2_normalize(q)
  k = jax.lax.stop_gradient(l2_normalize(k))
  queue = jax.lax.stop_gradient(queue)
  positive_cosine = jnp.sum(q * k, axis=-1)
  negative_cosine = jnp.matmul(q, queue.T, precision=_HIGHEST)
  differences = (negative_cosine - positive_cosine[:, None]) / temperature
  return _cross_entropy_of_positive(differences, positive_cosine)
