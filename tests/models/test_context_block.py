"""The context block's hand-written backward pass against autodiff of the plain composition.

The reference below is CBAM written the direct way (flax Dense and Conv,
jnp mean/max, jax's own gradients), as the model computed it before the
block got its custom_vjp. Inputs carry the ties a post-ReLU map has: a
dead channel (every position ties for the spatial max) and pixels where
every channel is zero (every channel ties for the channel max).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlvicx_jax.models import attention


class ReferenceChannel(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    fc1 = nn.Dense(x.shape[-1] // 2, use_bias=False, dtype=self.dtype, name='fc1')
    fc2 = nn.Dense(x.shape[-1], use_bias=False, dtype=self.dtype, name='fc2')
    mlp = lambda v: fc2(nn.relu(fc1(v)))
    gate = nn.sigmoid(mlp(jnp.mean(x, axis=(1, 2))) + mlp(jnp.max(x, axis=(1, 2))))
    return x * gate[:, None, None, :]


class ReferenceSpatial(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = jnp.concatenate([jnp.mean(x, -1, keepdims=True), jnp.max(x, -1, keepdims=True)], -1)
    conv = nn.Conv(1, (7, 7), padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
                   name='conv')
    return x * nn.sigmoid(conv(d))


class ReferenceBlock(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return ReferenceSpatial(self.dtype, name='sam')(ReferenceChannel(self.dtype, name='cam')(x))


def tied_input(shape, seed):
  """Post-ReLU-like: half zeros, one dead channel, a block of all-zero pixels, repeated maxima."""
  rng = np.random.default_rng(seed)
  x = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
  x[..., 1] = 0.0                   # a dead channel: every position ties for its max
  x[:, :3, :3, :] = 0.0             # pixels where all channels tie at 0
  x[:, -2:, -2:, 2] = x[..., 2].max() + 1.0  # the spatial max of channel 2 at four positions
  return jnp.asarray(x)


def max_rel_err(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize('shape', [(2, 12, 12, 8), (3, 9, 16, 16)])
def test_output_and_gradients_match_autodiff_of_the_plain_block(shape):
  x = tied_input(shape, seed=shape[1])
  assert np.any(np.all(np.asarray(x) == 0, axis=-1))  # channel-max ties at some pixels
  cotangent = jnp.asarray(np.random.default_rng(7).standard_normal(shape).astype(np.float32))
  new, ref = attention.ContextBottleneck(), ReferenceBlock()
  variables = ref.init(jax.random.PRNGKey(3), x)

  def vjp(module):
    out, pull = jax.vjp(lambda v, x: module.apply(v, x), variables, x)
    return out, pull(cotangent)

  (out, grads), (ref_out, ref_grads) = jax.jit(lambda: vjp(new))(), jax.jit(lambda: vjp(ref))()
  assert max_rel_err(out, ref_out) < 1e-6
  flat, ref_flat = jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)
  assert len(flat) == len(ref_flat) == 4  # fc1, fc2, conv kernels and the input
  for (path, g), r in zip(flat, ref_flat):
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
    assert max_rel_err(g, r) < 1e-5, jax.tree_util.keystr(path)


def test_parameters_keep_their_names_shapes_and_initial_values():
  """Checkpoints written before the custom_vjp load as they are."""
  x = jnp.ones((1, 8, 8, 16))
  new = attention.ContextBottleneck().init(jax.random.PRNGKey(5), x)
  ref = ReferenceBlock().init(jax.random.PRNGKey(5), x)
  assert jax.tree.structure(new) == jax.tree.structure(ref)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)


def test_bfloat16_computes_in_bfloat16_and_returns_float32_parameter_gradients():
  x = tied_input((2, 12, 12, 8), seed=1)
  variables = ReferenceBlock().init(jax.random.PRNGKey(2), x)
  block = attention.ContextBottleneck(dtype=jnp.bfloat16)
  out, pull = jax.vjp(lambda v, x: block.apply(v, x), variables, x)
  grads, gx = pull(jnp.ones(out.shape, out.dtype))
  assert out.dtype == jnp.bfloat16 and gx.dtype == jnp.float32
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  reference = ReferenceBlock().apply(variables, x)
  assert max_rel_err(out, reference) < 2e-2


def test_shifted_sum_is_the_same_correlation_as_a_convolution():
  rng = np.random.default_rng(4)
  planes = rng.standard_normal((2, 3, 10, 13)).astype(np.float32)
  kernel = rng.standard_normal((5, 5, 2, 1)).astype(np.float32)
  padded = [jnp.pad(jnp.asarray(p), ((0, 0), (2, 2), (2, 2))) for p in planes]
  expected = np.zeros((3, 10, 13))
  for c in range(2):  # 'same' cross-correlation, zero padding, numpy in float64
    pad = np.pad(planes[c].astype(np.float64), ((0, 0), (2, 2), (2, 2)))
    for dy in range(5):
      for dx in range(5):
        expected += kernel[dy, dx, c, 0] * pad[:, dy:dy + 10, dx:dx + 13]
  np.testing.assert_allclose(attention.shifted_sum(padded, jnp.asarray(kernel)), expected,
                             rtol=1e-5, atol=1e-5)


def test_gradients_when_xla_recomputes_the_input_in_every_fusion():
  """The block after a convolution and BatchNorm+ReLU in one jit, as in the trunk.

  XLA fuses the normalisation into each consumer, so the forward's channel
  max and the backward's comparisons see separately rounded copies of the
  map; a backward that tested equality with the forward's max found no
  maximum at some pixels of this very input and divided by zero ties (NaN).
  """
  shape = (8, 40, 40, 16)
  rng = np.random.default_rng(11)
  image = jnp.asarray(rng.standard_normal(shape[:3] + (3,)).astype(np.float32))
  kernel = jnp.asarray(rng.standard_normal((7, 7, 3, 16)).astype(np.float32) * 0.2)
  cotangent = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
  variables = ReferenceBlock().init(jax.random.PRNGKey(4), jnp.zeros(shape))

  def grads(module):
    def loss(variables, kernel, scale, offset):
      z = jax.lax.conv_general_dilated(image, kernel, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      mean, var = jnp.mean(z, axis=(0, 1, 2)), jnp.var(z, axis=(0, 1, 2))
      x = nn.relu((z - mean) * jax.lax.rsqrt(var + 1e-5) * scale + offset)
      return jnp.sum(module.apply(variables, x) * cotangent)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(
        variables, kernel, jnp.full((16,), 1.3), jnp.full((16,), 0.1))

  new, ref = grads(attention.ContextBottleneck()), grads(ReferenceBlock())
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(new), jax.tree.leaves(ref)):
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
    assert max_rel_err(g, r) < 1e-5, jax.tree_util.keystr(path)
