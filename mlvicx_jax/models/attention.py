"""The context-bottleneck block: CBAM channel attention, then spatial attention.

The block is one function with a hand-written backward pass (custom_vjp).
Autodiff of the plain composition ran the 7x7 convolution on two channels,
and its input gradient, at about 1 GFLOP/s on XLA's CPU. Here the
convolution and its input gradient are sums of 98 shifted planes (float32
accumulation), its kernel gradient is XLA's own. The reductions over
channels are variadic reduces (the channel sum and max in one pass, forward;
the spatial-logit gradient, the max, its index and its ties in one pass,
backward): XLA fuses the products they read into them, where a plain
reduce goes to a library kernel that needs every broadcast operand written
out as a full map first (four such maps per view on the stem map cost more
than the block's arithmetic). Values and gradients are those of the plain
composition up to float rounding (ties split evenly, as jax does);
tests/models/test_context_block.py checks both.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class _Kernel(nn.Module):
  """A bias-free Dense/Conv kernel by itself: the same parameter path, shape and init.

  Read through `value`, not __call__, so that capture_intermediates does not
  list a parameter among the block's activations.
  """
  shape: tuple

  @nn.compact
  def value(self):
    return self.param('kernel', nn.initializers.lecun_normal(), self.shape)


def _mlp(v, fc1, fc2):
  """The channel-attention MLP (the official 1x1 convs on 1x1 maps are Dense layers)."""
  return jnp.dot(nn.relu(jnp.dot(v, fc1)), fc2)


def shifted_sum(planes, kernel):
  """sum_{c,dy,dx} kernel[dy,dx,c] * planes[c][:, dy:dy+H, dx:dx+W], in float32.

  `planes` are zero-padded (N, H+k-1, W+k-1) maps: the 'same' correlation of
  a k x k, one-output convolution, as a fused loop of multiply-adds.
  """
  k = kernel.shape[0]
  height, width = planes[0].shape[1] - k + 1, planes[0].shape[2] - k + 1
  kernel = kernel.astype(jnp.float32)
  out = None
  for c, plane in enumerate(planes):
    plane = plane.astype(jnp.float32)
    for dy in range(k):
      for dx in range(k):
        term = kernel[dy, dx, c] * plane[:, dy:dy + height, dx:dx + width]
        out = term if out is None else out + term
  return out


def _pad(plane, pad):
  return jnp.pad(plane, ((0, 0), (pad, pad), (pad, pad)))


def _below_max(values, peak):
  """1.0 where `values` are below their max `peak` (>= values), 0.0 where they equal it.

  sign(peak - values), not a compare, so that XLA's CPU fuses it into the
  reductions and products that use it (a compare there first writes a
  full-size mask). The minimum keeps a product in `values` rounded as it was
  when `peak` was taken (a multiply feeding the subtraction may otherwise
  become one fused multiply-add). Differs from != only for two distinct
  values within float32's smallest normal number (1.2e-38) of each other,
  whose difference flushes to zero.
  """
  return jnp.sign(peak - jnp.minimum(values, peak))


def _ties(values, peak, axis):
  """How many `values` equal their max `peak` along `axis`, in float32."""
  size = functools.reduce(lambda a, b: a * b, (values.shape[a] for a in axis))
  return size - jnp.sum(_below_max(values, peak).astype(jnp.float32), axis=axis)


def _split(gradient, ties, dtype):
  """A max-pool's gradient shared evenly by the tied positions."""
  return (gradient.astype(jnp.float32) / ties).astype(dtype)


def _sum_and_max(values, axis):
  """(sum, max) of float32 `values` over `axis` in one pass (one variadic reduce)."""
  return jax.lax.reduce((values, values), (0.0, -jnp.inf),
                        lambda a, b: (a[0] + b[0], jnp.maximum(a[1], b[1])), axis)


def _sum_and_argmax_last(terms, values):
  """Over the last axis, in one pass: sum(terms), max(values), the index of a
  maximum and how many values equal it (all float32).

  The index and the count come from the very values compared, so they agree:
  a maximum recomputed in another fusion may round differently (XLA CPU
  recomputes a fused BatchNorm+ReLU in each consumer) and an equality test
  against it could find no maximum at all.
  """
  index = jax.lax.broadcasted_iota(jnp.float32, values.shape, values.ndim - 1)

  def combine(a, b):
    peak = jnp.maximum(a[1], b[1])
    a_max, b_max = a[1] == peak, b[1] == peak
    return (a[0] + b[0], peak, jnp.where(a_max, a[2], b[2]),
            jnp.where(a_max, a[3], 0.0) + jnp.where(b_max, b[3], 0.0))

  return jax.lax.reduce((terms, values, index, jnp.ones_like(values)),
                        (0.0, -jnp.inf, 0.0, 0.0), combine, (values.ndim - 1,))


# Jitted so that an eager call (model.init outside jit) compiles the block once
# instead of dispatching its few hundred small operations one by one.
@functools.partial(jax.jit, static_argnums=4)
def _forward(x_in, fc1_in, fc2_in, conv_in, dtype):
  """The output, and the residuals of the backward pass: the input and small maps."""
  x = x_in.astype(dtype)
  fc1, fc2, conv_k = (w.astype(dtype) for w in (fc1_in, fc2_in, conv_in))
  avg, peak = jnp.mean(x, axis=(1, 2)), jnp.max(x, axis=(1, 2))
  channel = nn.sigmoid(_mlp(avg, fc1, fc2) + _mlp(peak, fc1, fc2))
  ch = channel[:, None, None, :]
  total_c, max_c = _sum_and_max((x * ch).astype(jnp.float32), (3,))
  mean_c, max_c = (total_c / x.shape[-1]).astype(dtype), max_c.astype(dtype)
  pad = conv_k.shape[0] // 2
  logits = shifted_sum([_pad(mean_c, pad), _pad(max_c, pad)], conv_k).astype(dtype)
  spatial = nn.sigmoid(logits)
  y = x * ch * spatial[..., None]
  return y, (x_in, fc1_in, fc2_in, conv_in, avg, peak, channel, mean_c, max_c, spatial)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def context_bottleneck(x, fc1, fc2, conv, dtype=jnp.float32):
  """CBAM as the official code: x * ca(x), then that * sa(that); no residual.

  x: (N, H, W, C); fc1: (C, C/r); fc2: (C/r, C); conv: (k, k, 2, 1), input
  channels [mean, max] over channels. Computes in `dtype`.
  """
  return _forward(x, fc1, fc2, conv, dtype)[0]


@functools.partial(jax.jit, static_argnums=0)
def _bwd(dtype, saved, gy):
  inputs, (avg, peak, channel, mean_c, max_c, spatial) = saved[:4], saved[4:]
  x, fc1, fc2, conv_k = (v.astype(dtype) for v in inputs)
  height, width, channels = x.shape[1:]
  pad = conv_k.shape[0] // 2
  gy = gy.astype(dtype)
  ch = channel[:, None, None, :]
  peak_b = peak[:, None, None, :]
  # Over channels, one pass: d loss / d spatial logits, and the channels at the max.
  scaled = x * ch
  g_spatial, top, top_index, ties_c = _sum_and_argmax_last(
      (gy * scaled).astype(jnp.float32), scaled.astype(jnp.float32))
  g_logits = (g_spatial * spatial * (1 - spatial)).astype(dtype)
  # A single maximum by its index (exact); tied ones by value (in practice the
  # zeros of a post-ReLU map, which every fusion computes alike). The count is
  # at least 1 either way, so the split below never divides by zero.
  at_top = jnp.where((ties_c == 1)[..., None],
                     jax.lax.broadcasted_iota(jnp.float32, scaled.shape, 3) == top_index[..., None],
                     scaled.astype(jnp.float32) == top[..., None]).astype(dtype)
  # The convolution: input gradient as shifted sums with the flipped kernel,
  # kernel gradient by XLA's transpose of the convolution.
  g_pad = _pad(g_logits, pad)
  flipped = conv_k[::-1, ::-1]
  g_mean_c = shifted_sum([g_pad], flipped[:, :, 0:1]).astype(dtype)
  g_max_c = _split(shifted_sum([g_pad], flipped[:, :, 1:2]), ties_c, dtype)
  _, conv_vjp = jax.vjp(
      lambda kernel: jax.lax.conv_general_dilated(
          jnp.stack([mean_c, max_c], axis=-1), kernel, (1, 1), ((pad, pad), (pad, pad)),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC')), conv_k)
  (g_conv,) = conv_vjp(g_logits[..., None])
  # d loss / d (x * channel), recomputed where it is used rather than written out.
  g_scaled = (gy * spatial[..., None] + (g_mean_c / channels)[..., None]
              + at_top * g_max_c[..., None])
  # Over positions: the channel gate's gradient, and ties for the spatial max.
  g_channel = jnp.sum(g_scaled * x, axis=(1, 2))
  ties_sp = _ties(x, peak_b, (1, 2))
  g_channel_logits = (g_channel * channel * (1 - channel)).astype(dtype)
  _, mlp_vjp = jax.vjp(lambda a, p, w1, w2: _mlp(a, w1, w2) + _mlp(p, w1, w2),
                       avg, peak, fc1, fc2)
  g_avg, g_peak, g_fc1, g_fc2 = mlp_vjp(g_channel_logits)
  # The input gradient.
  g_peak = _split(g_peak, ties_sp, dtype)[:, None, None, :]
  g_x = (g_scaled * ch + (g_avg / (height * width))[:, None, None, :]
         + (1 - _below_max(x, peak_b)) * g_peak)
  return tuple(g.astype(v.dtype) for g, v in zip((g_x, g_fc1, g_fc2, g_conv), inputs))


context_bottleneck.defvjp(_forward, _bwd)


class _Kernels(nn.Module):
  """Bias-free Dense/Conv kernels by name: the same parameter paths, shapes and init."""
  shapes: tuple  # ((name, shape), ...)

  @nn.compact
  def values(self):
    return [_Kernel(shape, name=name).value() for name, shape in self.shapes]


class ContextBottleneck(nn.Module):
  """Channel then spatial attention, no residual (as the official code).

  Parameters as the official code's modules, so that torch weights port:
  cam/fc1, cam/fc2 (the shared MLP), sam/conv (k x k, 2 -> 1).
  """
  reduction: int = 2
  kernel_size: int = 7
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    if channels % self.reduction:
      raise ValueError(f'reduction {self.reduction} does not divide the '
                       f'{channels} channels of the context bottleneck')
    hidden = channels // self.reduction
    fc1, fc2 = _Kernels((('fc1', (channels, hidden)), ('fc2', (hidden, channels))),
                        name='cam').values()
    (conv,) = _Kernels((('conv', (self.kernel_size,) * 2 + (2, 1)),), name='sam').values()
    return context_bottleneck(x, fc1, fc2, conv, self.dtype)
