"""ResNet18 in torchvision's layout.

Explicit paddings (not 'SAME') and torch-like parameter names, so ImageNet and
official MLVICX PyTorch weights port tensor by tensor and give the same outputs.
"""
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mlvicx_jax.models import pooling

ModuleDef = Any

# torchvision initialises convolutions with Kaiming-normal, fan_out, ReLU gain.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# Running-statistics decay in flax terms (torch momentum 0.1).
BN_MOMENTUM = 0.9


def batch_norm(train: bool, dtype: Any = jnp.float32) -> ModuleDef:
  """BatchNorm with torch's defaults (eps 1e-5, running-stat momentum 0.1).

  Under jit with a batch-sharded input the mean is over the global batch,
  which is SyncBN, the VICReg/MLVICX multi-device behaviour.
  """
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
      epsilon=1e-5, dtype=dtype)


class BasicBlock(nn.Module):
  """Two 3x3 convs with an identity or 1x1-conv shortcut (torchvision BasicBlock)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    pad = ((1, 1), (1, 1))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides),
                  padding=pad, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.filters, (3, 3), padding=pad, name='conv2')(y)
    y = self.norm(name='bn2')(y)
    if x.shape != y.shape:
      x = self.conv(self.filters, (1, 1), (self.strides, self.strides),
                    padding='VALID', name='downsample_conv')(x)
      x = self.norm(name='downsample_bn')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet with an optional refinement block after the stem and every stage.

  With `context_block` set this is the MLVICX encoder trunk: each refined map
  feeds the next stage. Without it, it is a plain ResNet whose parameters are
  the same tree minus the `cbt*` entries, which is how downstream tasks drop
  the context bottlenecks.

  Returns `features` (global average pool of the last map, float32) and
  `maps`, the stem map (after ReLU, before max-pool) and the stage outputs.
  `deltas` ({level: array}, level 0 the stem map, i the output of stage i)
  are added to those maps before they feed on, so that d out / d delta is
  d out / d map: Grad-CAM at any level.
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  num_filters: int = 64
  context_block: Optional[Callable[..., nn.Module]] = None
  dtype: Any = jnp.float32
  # Rematerialise every residual block and context block: the backward pass
  # recomputes them from their inputs instead of keeping their insides
  # (less memory for large per-device batches, one more forward of the trunk).
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True, deltas=None):
    deltas = deltas or {}
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=conv_kernel_init)
    norm = batch_norm(train, self.dtype)

    block_cls = nn.remat(BasicBlock) if self.remat else BasicBlock
    context_cls = self.context_block
    if self.remat and context_cls is not None:
      context_cls = nn.remat(context_cls)

    def refine(y, index):
      if context_cls is None:
        return y
      return context_cls(name=f'cbt{index + 1}')(y)

    x = conv(self.num_filters, (7, 7), (2, 2), padding=((3, 3), (3, 3)),
             name='conv1')(x.astype(self.dtype))
    x = nn.relu(norm(name='bn1')(x))
    x = refine(x, 0)
    if 0 in deltas:
      x = (x.astype(jnp.float32) + deltas[0]).astype(x.dtype)
    maps = [x]
    x = pooling.stem_max_pool(x)  # nn.max_pool's values and gradients, a cheaper backward
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = block_cls(self.num_filters * 2**i, conv=conv, norm=norm,
                       strides=2 if i > 0 and j == 0 else 1,
                       name=f'layer{i + 1}_{j}')(x)
      x = refine(x, i + 1)
      if i + 1 in deltas:
        x = x.astype(jnp.float32) + deltas[i + 1]
      maps.append(x)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return {'features': features, 'maps': maps}


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
