"""The stem max pool's values and gradients against flax's nn.max_pool (jax's select-and-scatter).

Cotangents are small integers, so every input gradient is an exact sum in
float32: a position that got a window's gradient the reference sent
elsewhere shows as an inequality, not as a rounding difference. The inputs
tie the way a post-ReLU map does: zeros (whole windows of them) and repeated
values.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlvicx_jax.models import pooling


def reference(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def tied_map(shape, seed):
  """A post-ReLU-like map: about half zeros, the rest from a few repeated levels."""
  rng = np.random.default_rng(seed)
  return np.maximum(rng.integers(-4, 4, shape), 0).astype(np.float32) * 0.25


@pytest.mark.parametrize('shape', [(2, 16, 16, 3), (2, 15, 17, 4), (1, 7, 7, 8), (3, 2, 3, 2)])
def test_values_and_gradients_equal_select_and_scatter(shape):
  x = jnp.asarray(tied_map(shape, seed=sum(shape)))
  out_shape = reference(x).shape
  cotangent = jnp.asarray(np.random.default_rng(1).integers(-8, 9, out_shape).astype(np.float32))
  y, pullback = jax.vjp(pooling.stem_max_pool, x)
  y_ref, pullback_ref = jax.vjp(reference, x)
  assert y.shape == y_ref.shape
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
  np.testing.assert_array_equal(np.asarray(pullback(cotangent)[0]),
                                np.asarray(pullback_ref(cotangent)[0]))


def test_gradient_when_xla_recomputes_the_input_in_every_fusion():
  """BatchNorm+ReLU before the pool in one jit, as in the stem: XLA fuses it into each consumer."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((4, 32, 32, 8)).astype(np.float32))
  scale = jnp.asarray(rng.standard_normal(8).astype(np.float32))
  cotangent = jnp.asarray(rng.integers(-8, 9, (4, 16, 16, 8)).astype(np.float32))

  def loss(pool, x, scale):
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    y = jax.nn.relu((x - mean) * jax.lax.rsqrt(var + 1e-5) * scale)
    return jnp.sum(pool(y) * cotangent)

  ours = jax.jit(jax.value_and_grad(lambda *a: loss(pooling.stem_max_pool, *a), (0, 1)))(x, scale)
  ref = jax.jit(jax.value_and_grad(lambda *a: loss(reference, *a), (0, 1)))(x, scale)
  np.testing.assert_allclose(float(ours[0]), float(ref[0]), rtol=1e-6)
  for got, want in zip(ours[1], ref[1]):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_bfloat16_keeps_its_dtype_and_values():
  x = jnp.asarray(tied_map((2, 12, 12, 4), seed=3), jnp.bfloat16)
  cotangent = jnp.ones((2, 6, 6, 4), jnp.bfloat16)
  y, pullback = jax.vjp(pooling.stem_max_pool, x)
  y_ref, pullback_ref = jax.vjp(reference, x)
  assert y.dtype == jnp.bfloat16 and pullback(cotangent)[0].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
  np.testing.assert_array_equal(np.asarray(pullback(cotangent)[0], np.float32),
                                np.asarray(pullback_ref(cotangent)[0], np.float32))
