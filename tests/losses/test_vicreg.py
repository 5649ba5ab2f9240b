"""VICReg / MLVICX losses against float64 transcriptions of SPEC section 2."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mlvicx_jax.losses import mlvicx_loss
from mlvicx_jax.losses import vicreg_loss

EPS = 1e-4
TERMS = ('inv', 'var', 'cov', 'std')


def reference_terms(z1, z2, eps=EPS):
  """SPEC formula, literally, in float64 with an explicit off-diagonal mask."""
  z1 = np.asarray(z1, np.float64).reshape(len(z1), -1)
  z2 = np.asarray(z2, np.float64).reshape(len(z2), -1)
  n, d = z1.shape
  off_diagonal = 1.0 - np.eye(d)

  def per_view(z):
    std = np.sqrt(np.var(z, axis=0, ddof=1) + eps)
    centred = z - z.mean(axis=0)
    c = centred.T @ centred / (n - 1)
    cov = np.sum((c * off_diagonal) ** 2) / d
    plain_std = np.mean(np.std(z, axis=0, ddof=1))
    return np.mean(np.maximum(1.0 - std, 0.0)), cov, plain_std

  var1, cov1, std1 = per_view(z1)
  var2, cov2, std2 = per_view(z2)
  return {
      'inv': np.mean((z1 - z2) ** 2),
      'var': var1 / 2 + var2 / 2,
      'cov': cov1 + cov2,
      'std': (std1 + std2) / 2,
  }


def reference_loss(z1, z2, sim=25.0, std=25.0, cov=1.0):
  t = reference_terms(z1, z2)
  return sim * t['inv'] + std * t['var'] + cov * t['cov']


def correlated_pair(seed, n, d, scale=1.0):
  """Two views with a shared factor, so every term is far from zero."""
  rng = np.random.default_rng(seed)
  z1 = scale * rng.normal(size=(n, d))
  z1[:, : d // 2] += rng.normal(size=(n, 1))
  z2 = z1 + 0.3 * scale * rng.normal(size=(n, d))
  return z1.astype(np.float32), z2.astype(np.float32)


def assert_matches_reference(loss, metrics, z1, z2, rtol, atol=0.0):
  want = reference_terms(z1, z2)
  for key in TERMS:
    np.testing.assert_allclose(float(metrics[key]), want[key], rtol=rtol,
                               atol=atol, err_msg=key)
  np.testing.assert_allclose(float(loss), reference_loss(z1, z2), rtol=rtol,
                             atol=atol)


@pytest.mark.parametrize('n, d', [(16, 24), (40, 6), (2, 5)],
                         ids=['n<d', 'n>d', 'batch_of_2'])
def test_vicreg_matches_reference(n, d):
  # n <= d and n > d take different (equivalent) covariance paths.
  z1, z2 = correlated_pair(0, n, d, scale=0.7)
  loss, metrics = jax.jit(vicreg_loss)(z1, z2)
  assert loss.dtype == jnp.float32
  assert_matches_reference(loss, metrics, z1, z2, rtol=2e-5, atol=1e-7)


def test_vicreg_flattens_trailing_axes():
  z1, z2 = correlated_pair(1, 8, 12)
  loss, metrics = vicreg_loss(z1.reshape(8, 3, 2, 2), z2.reshape(8, 3, 2, 2))
  assert_matches_reference(loss, metrics, z1, z2, rtol=2e-5, atol=1e-7)


def test_vicreg_coefficients_weight_the_unweighted_terms():
  z1, z2 = correlated_pair(2, 10, 7)
  loss, _ = vicreg_loss(z1, z2, sim_coeff=3.0, std_coeff=0.5, cov_coeff=7.0)
  np.testing.assert_allclose(
      float(loss), reference_loss(z1, z2, sim=3.0, std=0.5, cov=7.0),
      rtol=2e-5)


def test_vicreg_float32_accuracy_at_d4096():
  """Measured relative error vs float64 is <= 5e-7; tested at 1e-5."""
  z1, z2 = correlated_pair(3, 64, 4096)
  loss, metrics = jax.jit(vicreg_loss)(z1, z2)
  assert_matches_reference(loss, metrics, z1, z2, rtol=1e-5, atol=1e-7)


def test_vicreg_float32_accuracy_many_more_examples_than_dims():
  """Worst case for sum(C^2) - sum(diag(C)^2): decorrelated, N >> D.

  The diagonal dominates there; measured relative error of cov 3e-6,
  tested at 3e-5.
  """
  rng = np.random.default_rng(4)
  z1 = rng.normal(size=(4096, 48)).astype(np.float32)
  z2 = rng.normal(size=(4096, 48)).astype(np.float32)
  loss, metrics = jax.jit(vicreg_loss)(z1, z2)
  assert_matches_reference(loss, metrics, z1, z2, rtol=3e-5, atol=1e-7)


def test_vicreg_collapsed_embeddings():
  row = np.linspace(-2.0, 3.0, 16, dtype=np.float32)
  z = np.tile(row, (8, 1))
  loss, metrics = vicreg_loss(z, z)
  hinge = 1.0 - np.sqrt(EPS)  # relu(1 - sqrt(0 + eps)) = 0.99
  np.testing.assert_allclose(float(metrics['var']), hinge, rtol=1e-6)
  # The float32 batch mean of equal rows may be off by one ulp.
  for key in ('inv', 'cov', 'std'):
    np.testing.assert_allclose(float(metrics[key]), 0.0, atol=1e-6,
                               err_msg=key)
  np.testing.assert_allclose(float(loss), 25.0 * hinge, rtol=1e-6)

  grads = jax.grad(lambda a, b: vicreg_loss(a, b)[0], argnums=(0, 1))(
      jnp.asarray(z), jnp.asarray(z))
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))


def test_vicreg_bfloat16_input_is_computed_in_float32():
  z1, z2 = correlated_pair(5, 32, 64)
  b1, b2 = jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16)
  loss, metrics = vicreg_loss(b1, b2)
  assert loss.dtype == jnp.float32
  assert all(metrics[k].dtype == jnp.float32 for k in TERMS)
  # Reference on the bf16-rounded values: only the input is rounded.
  r1 = np.asarray(b1.astype(jnp.float32))
  r2 = np.asarray(b2.astype(jnp.float32))
  assert_matches_reference(loss, metrics, r1, r2, rtol=2e-5, atol=1e-7)


def test_vicreg_gradient_matches_torch_float64():
  z1, z2 = correlated_pair(6, 12, 20, scale=0.5)
  t1 = torch.tensor(z1, dtype=torch.float64, requires_grad=True)
  t2 = torch.tensor(z2, dtype=torch.float64, requires_grad=True)

  def torch_view_terms(z):
    n, d = z.shape
    std = torch.sqrt(z.var(dim=0, unbiased=True) + EPS)
    centred = z - z.mean(dim=0)
    c = centred.T @ centred / (n - 1)
    off = c * (1 - torch.eye(d, dtype=z.dtype))
    return torch.relu(1 - std).mean(), off.pow(2).sum() / d

  v1, c1 = torch_view_terms(t1)
  v2, c2 = torch_view_terms(t2)
  torch_loss = (25 * (t1 - t2).pow(2).mean() + 25 * (v1 / 2 + v2 / 2)
                + c1 + c2)
  torch_loss.backward()

  g1, g2 = jax.grad(lambda a, b: vicreg_loss(a, b)[0], argnums=(0, 1))(
      jnp.asarray(z1), jnp.asarray(z2))
  np.testing.assert_allclose(np.asarray(g1), t1.grad.numpy(), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(g2), t2.grad.numpy(), rtol=1e-4,
                             atol=1e-6)


@pytest.mark.parametrize('z1_shape, z2_shape, message', [
    ((4, 3), (4, 2), 'same shape'),
    ((1, 3), (1, 3), 'at least 2'),
    ((5,), (5,), 'batch axis'),
])
def test_vicreg_rejects_bad_shapes(z1_shape, z2_shape, message):
  with pytest.raises(ValueError, match=message):
    vicreg_loss(np.zeros(z1_shape, np.float32), np.zeros(z2_shape, np.float32))


def test_vicreg_statistics_are_over_a_sharded_global_batch():
  """Under jit with the batch split over 2 devices, the loss is unchanged."""
  script = textwrap.dedent("""
      import jax, numpy as np
      from jax.sharding import NamedSharding, PartitionSpec, Mesh
      from mlvicx_jax.losses import vicreg_loss
      assert jax.device_count() == 2, jax.devices()
      rng = np.random.default_rng(0)
      z1 = rng.normal(size=(8, 6)).astype(np.float32)
      z2 = (z1 + rng.normal(size=(8, 6))).astype(np.float32)
      mesh = Mesh(np.array(jax.devices()), ('data',))
      batch = NamedSharding(mesh, PartitionSpec('data'))
      s1, s2 = jax.device_put(z1, batch), jax.device_put(z2, batch)
      assert len(s1.addressable_shards) == 2
      loss, _ = jax.jit(vicreg_loss)(s1, s2)
      print(repr(float(loss)))
  """)
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = subprocess.run([sys.executable, '-c', script], env=env, check=True,
                       capture_output=True, text=True).stdout
  rng = np.random.default_rng(0)
  z1 = rng.normal(size=(8, 6)).astype(np.float32)
  z2 = (z1 + rng.normal(size=(8, 6))).astype(np.float32)
  np.testing.assert_allclose(float(out.strip().splitlines()[-1]),
                             reference_loss(z1, z2), rtol=2e-5)


# --- mlvicx_loss ---------------------------------------------------------


@pytest.fixture(name='embeddings')
def fixture_embeddings():
  z1, z2 = correlated_pair(7, 10, 16)
  m1, m2 = correlated_pair(8, 10, 12, scale=2.0)
  return z1, z2, m1, m2


@pytest.mark.parametrize('use_global, use_local', [
    (True, True), (True, False), (False, True)])
def test_mlvicx_loss_combinations(embeddings, use_global, use_local):
  z1, z2, m1, m2 = embeddings
  lam = 0.5
  loss, metrics = mlvicx_loss(z1, z2, m1, m2, lam=lam, use_global=use_global,
                              use_local=use_local)
  want_global = reference_loss(z1, z2) if use_global else 0.0
  want_local = reference_loss(m1, m2) if use_local else 0.0
  np.testing.assert_allclose(float(loss), want_global + lam * want_local,
                             rtol=2e-5)
  np.testing.assert_allclose(float(metrics['loss']), float(loss), rtol=0)

  expected_keys = {'loss'}
  for branch, used, a, b in (('global', use_global, z1, z2),
                             ('local', use_local, m1, m2)):
    if not used:
      continue
    expected_keys |= {f'{branch}/{k}' for k in TERMS + ('loss',)}
    want = reference_terms(a, b)
    for key in TERMS:
      np.testing.assert_allclose(float(metrics[f'{branch}/{key}']),
                                 want[key], rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(float(metrics[f'{branch}/loss']),
                               reference_loss(a, b), rtol=2e-5)
  assert set(metrics) == expected_keys


def test_mlvicx_loss_unused_branch_may_be_none(embeddings):
  z1, z2, _, _ = embeddings
  loss, _ = mlvicx_loss(z1, z2, None, None, use_local=False)
  np.testing.assert_allclose(float(loss), reference_loss(z1, z2), rtol=2e-5)


def test_mlvicx_loss_needs_a_branch(embeddings):
  with pytest.raises(ValueError, match='at least one'):
    mlvicx_loss(*embeddings, use_global=False, use_local=False)


def test_mlvicx_loss_rejects_negative_lambda(embeddings):
  with pytest.raises(ValueError, match='lam'):
    mlvicx_loss(*embeddings, lam=-1.0)
