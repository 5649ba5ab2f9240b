"""The context-bottleneck block: CBAM channel attention, then spatial attention."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class ChannelAttention(nn.Module):
  """Reweights channels by a shared MLP over avg- and max-pooled descriptors.

  The official code's 1x1 convs on 1x1 maps are dense layers on vectors.
  """
  reduction: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    if channels % self.reduction:
      raise ValueError(f'reduction {self.reduction} does not divide the '
                       f'{channels} channels of the context bottleneck')
    fc1 = nn.Dense(channels // self.reduction, use_bias=False,
                   dtype=self.dtype, name='fc1')
    fc2 = nn.Dense(channels, use_bias=False, dtype=self.dtype, name='fc2')
    mlp = lambda v: fc2(nn.relu(fc1(v)))
    logits = mlp(jnp.mean(x, axis=(1, 2))) + mlp(jnp.max(x, axis=(1, 2)))
    return x * nn.sigmoid(logits)[:, None, None, :]


class SpatialAttention(nn.Module):
  """Reweights positions by a conv over the channel-mean and channel-max maps."""
  kernel_size: int = 7
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    descriptor = jnp.concatenate(
        [jnp.mean(x, axis=-1, keepdims=True),
         jnp.max(x, axis=-1, keepdims=True)], axis=-1)
    pad = self.kernel_size // 2
    logits = nn.Conv(1, (self.kernel_size, self.kernel_size),
                     padding=((pad, pad), (pad, pad)), use_bias=False,
                     dtype=self.dtype, name='conv')(descriptor)
    return x * nn.sigmoid(logits)


class ContextBottleneck(nn.Module):
  """Channel then spatial attention, no residual (as the official code)."""
  reduction: int = 2
  kernel_size: int = 7
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ChannelAttention(self.reduction, self.dtype, name='cam')(x)
    return SpatialAttention(self.kernel_size, self.dtype, name='sam')(x)
