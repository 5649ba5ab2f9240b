"""Projection heads: the global MLP and the multi-level branch."""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mlvicx_jax.models import resample
from mlvicx_jax.models.resnet import batch_norm

# torch.nn.Linear's default init (Kaiming-uniform with a=sqrt(5)) is
# uniform(+-1/sqrt(fan_in)) for weights; lecun-uniform has the same bound/sqrt(3).
linear_kernel_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


OUTPUT_NORMS = ('affine', 'plain', 'none')


def _rows_then_columns(x, along_h, along_w):
  """einsum('ph,nhwc,qw->npqc'): resample a (N, H, W, C) map along H, then W.

  The H step is one matmul per example, (P, H) @ (H, W*C), with the matrix
  repeated over the batch: contracted so, the map is read in its own layout
  and its gradient is written in it. (A plain einsum contracts H across the
  batch, which makes XLA copy the whole map, and its gradient, transposed.)
  """
  n, h, w, c = x.shape
  along_h = jnp.broadcast_to(along_h, (n,) + along_h.shape)
  x = jnp.einsum('nph,nhk->npk', along_h, x.reshape(n, h, w * c))
  x = x.reshape(n, along_h.shape[1], w, c)
  return jnp.einsum('qw,npwc->npqc', along_w, x)


def per_view(layer, x):
  """`layer` on (batch, F), or on each view of (views, batch, F) in turn.

  One call per view keeps a BatchNorm's statistics per view and chains its
  running statistics view 1 -> view 2, as separate forward passes do.
  """
  if x.ndim == 2:
    return layer(x)
  return jnp.stack([layer(view) for view in x])


class ProjectionHead(nn.Module):
  """Linear+BN+ReLU layers, then a last Linear with an optional BN, no ReLU.

  Input (batch, F), or (views, batch, F): every Linear is then one matmul for
  all views (its weights read once), every BN per view.

  The defaults are official MLVICX (BN with scale and offset after the last
  layer). The comparison methods' heads differ only in these switches:
  `hidden_norm=False` drops the hidden BNs (MoCo v2), `output_norm='plain'`
  is a BN without scale and offset (SimSiam) and 'none' none at all (VICReg,
  BYOL, SimCLR), `output_bias=False` a last Linear without bias.
  """
  widths: Sequence[int] = (4096, 4096, 4096)
  hidden_norm: bool = True
  output_norm: str = 'affine'
  output_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.output_norm not in OUTPUT_NORMS:
      raise ValueError(f'head output_norm must be one of {OUTPUT_NORMS}, got {self.output_norm!r}')
    norm = batch_norm(train, self.dtype)
    for i, width in enumerate(self.widths):
      last = i == len(self.widths) - 1
      x = nn.Dense(width, dtype=self.dtype, kernel_init=linear_kernel_init,
                   use_bias=self.output_bias or not last, name=f'linear{i + 1}')(x)
      if not last:
        if self.hidden_norm:
          x = per_view(norm(name=f'bn{i + 1}'), x)
        x = nn.relu(x)
      elif self.output_norm != 'none':
        plain = self.output_norm == 'plain'
        x = per_view(norm(use_scale=not plain, use_bias=not plain, name=f'bn{i + 1}'), x)
    return x.astype(jnp.float32)


class MultiLevelBranch(nn.Module):
  """Resize every level to one size, project to one width, aggregate, pool, project.

  `aggregation='sum'` is the official code, `'concat'` the paper's `(||)`.
  `implementation='folded'` pools each level through the composed
  resize-and-pool matrix before the 1x1 projection; `'naive'` resizes to
  `common_size` first, as the official code does. Both compute the same
  function (resize, 1x1 conv with bias, sum and average pool are linear and
  every resampling row sums to one); folded costs ~100x fewer FLOPs.
  """
  head_widths: Sequence[int] = (4096, 4096, 4096)
  levels: Sequence[int] = (0, 1, 2, 3, 4)
  common_size: int = 64
  channels: int = 512
  pool_size: int = 4
  aggregation: str = 'sum'
  implementation: str = 'folded'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, maps, train: bool = True, views: bool = False):
    """`maps`: one view's maps (a list over levels), or with `views` a list of
    those, one per view: the levels are then pooled per view and the head
    runs once on both."""
    if self.aggregation not in ('sum', 'concat'):
      raise ValueError(f"model.aggregation must be 'sum' or 'concat', got {self.aggregation!r}")
    if self.implementation not in ('folded', 'naive'):
      raise ValueError(f"model.multilevel_impl must be 'folded' or 'naive', got {self.implementation!r}")
    projections = {level: nn.Dense(self.channels, dtype=self.dtype,
                                   kernel_init=linear_kernel_init, name=f'proj{level}')
                   for level in self.levels}
    pool = functools.partial(self._pooled, projections)
    x = jnp.stack([pool(one) for one in maps]) if views else pool(maps)
    return ProjectionHead(self.head_widths, dtype=self.dtype, name='head')(x, train)

  def _pooled(self, projections, maps):
    """(batch, C * pool_size**2): every level resampled, projected, aggregated, flattened."""
    projected = []
    for level in self.levels:
      x = maps[level]
      height, width = x.shape[1:3]
      if self.implementation == 'folded':
        along_h = resample.resize_then_pool_matrix(height, self.common_size, self.pool_size)
        along_w = resample.resize_then_pool_matrix(width, self.common_size, self.pool_size)
      else:
        along_h = resample.bilinear_matrix(height, self.common_size)
        along_w = resample.bilinear_matrix(width, self.common_size)
      x = _rows_then_columns(x, along_h.astype(x.dtype), along_w.astype(x.dtype))
      projected.append(projections[level](x))
    if self.aggregation == 'sum':
      x = sum(projected)
    else:
      x = jnp.concatenate(projected, axis=-1)
    if self.implementation == 'naive':
      pool = resample.adaptive_avg_pool_matrix(self.common_size, self.pool_size)
      x = jnp.einsum('ph,nhwc,qw->npqc', pool.astype(x.dtype), x, pool.astype(x.dtype))
    # Flatten channel-major (C, H, W) like torch, so ported Linear weights fit as-is.
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
