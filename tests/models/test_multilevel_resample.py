"""The multi-level branch's resampling (per-example matmuls) against numpy's einsum."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlvicx_jax.models import heads
from mlvicx_jax.models import resample


@pytest.mark.parametrize('shape', [(3, 28, 28, 16), (2, 7, 9, 8), (1, 56, 40, 4)])
def test_rows_then_columns_is_the_two_sided_product(shape):
  rng = np.random.default_rng(shape[1])
  x = rng.standard_normal(shape).astype(np.float32)
  along_h = resample.resize_then_pool_matrix(shape[1], 64, 4)
  along_w = resample.resize_then_pool_matrix(shape[2], 64, 4)
  expected = np.einsum('ph,nhwc,qw->npqc', along_h, x.astype(np.float64), along_w)
  out = heads._rows_then_columns(jnp.asarray(x), jnp.asarray(along_h, jnp.float32),  # pylint: disable=protected-access
                                 jnp.asarray(along_w, jnp.float32))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  # Its gradient is the transposed product, written in the map's own layout.
  cot = rng.standard_normal(expected.shape).astype(np.float32)
  grad = jax.grad(lambda x: jnp.sum(heads._rows_then_columns(  # pylint: disable=protected-access
      x, jnp.asarray(along_h, jnp.float32), jnp.asarray(along_w, jnp.float32)) * cot))(
          jnp.asarray(x))
  np.testing.assert_allclose(grad, np.einsum('ph,npqc,qw->nhwc', along_h, cot, along_w),
                             rtol=1e-5, atol=1e-6)
