"""SimCLR, MoCo, BYOL, SimSiam and Barlow Twins against float64 transcriptions.

Each reference is written from the paper's formula with explicit loops, in
float64 on the float32-rounded inputs; gradients are checked against central
finite differences of the same references.
"""

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from mlvicx_jax.losses import barlow_twins_loss
from mlvicx_jax.losses import byol_loss
from mlvicx_jax.losses import moco_loss
from mlvicx_jax.losses import simclr_loss
from mlvicx_jax.losses import simsiam_loss

RTOL = 1e-5
CASES = ['random', 'batch_of_2', 'identical', 'collapsed']


def unit(v):
  """v / max(||v||, 1e-12), torch's F.normalize."""
  return v / max(np.sqrt(np.sum(v * v)), 1e-12)


def unit_rows(x):
  return np.stack([unit(r) for r in x])


def ref_simclr(z1, z2, t=0.1):
  """Chen et al. 2020, Alg. 1: the views of example k sit at 2k and 2k + 1."""
  x = []
  for a, b in zip(z1, z2):
    x += [unit(a), unit(b)]
  m = len(x)
  s = lambda i, j: float(np.dot(x[i], x[j]))

  def ell(i, j):  # l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t)
    return -np.log(np.exp(s(i, j) / t)
                   / sum(np.exp(s(i, k) / t) for k in range(m) if k != i))

  pairs = [(2 * k, 2 * k + 1) for k in range(len(z1))]
  pairs += [(j, i) for i, j in pairs]
  return {
      'loss': sum(ell(i, j) for i, j in pairs) / m,
      'accuracy': np.mean([all(s(i, j) > s(i, k) for k in range(m)
                               if k not in (i, j)) for i, j in pairs]),
      'positive_similarity': np.mean([s(2 * k, 2 * k + 1)
                                      for k in range(len(z1))]),
  }


def ref_moco(q, k, queue, t=0.2):
  """He et al. 2020, Eq. 1: -log exp(q.k+/t) / sum over k+ and the queue."""
  losses, correct, positives = [], [], []
  for qi, ki in zip(q, k):
    qi, ki = unit(qi), unit(ki)
    pos = float(np.dot(qi, ki))
    negs = [float(np.dot(qi, kj)) for kj in queue]
    den = np.exp(pos / t) + sum(np.exp(c / t) for c in negs)
    losses.append(-np.log(np.exp(pos / t) / den))
    correct.append(all(pos > c for c in negs))
    positives.append(pos)
  return {'loss': np.mean(losses), 'accuracy': np.mean(correct),
          'positive_similarity': np.mean(positives)}


def ref_cosine(p, z, method):
  """BYOL: 2 - 2 <p, z>/(|p| |z|); SimSiam: -<p/|p|, z/|z|>; mean over rows."""
  cos = [float(np.dot(unit(a), unit(b))) for a, b in zip(p, z)]
  per_row = [2 - 2 * c if method == 'byol' else -c for c in cos]
  z_unit = np.stack([unit(b) for b in z])
  std = np.mean([np.sqrt(np.mean((z_unit[:, j] - z_unit[:, j].mean()) ** 2))
                 for j in range(z.shape[1])])
  return {'loss': np.mean(per_row), 'cosine': np.mean(cos), 'std': std}


def ref_barlow(z1, z2, lambd=0.0051, eps=1e-5):
  """Zbontar et al. 2021, Eqs. 1-2, after BatchNorm1d(affine=False)."""
  def batch_norm(z):
    return (z - z.mean(0)) / np.sqrt(((z - z.mean(0)) ** 2).mean(0) + eps)
  a, b = batch_norm(z1), batch_norm(z2)
  n, d = a.shape
  c = np.array([[sum(a[r, i] * b[r, j] for r in range(n)) / n
                 for j in range(d)] for i in range(d)])
  on = sum((1 - c[i, i]) ** 2 for i in range(d))
  off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
  return {'loss': on + lambd * off, 'on_diagonal': on, 'off_diagonal': off}


REFERENCE = {
    simclr_loss: ref_simclr, moco_loss: ref_moco, barlow_twins_loss: ref_barlow,
    byol_loss: lambda p, z: ref_cosine(p, z, 'byol'),
    simsiam_loss: lambda p, z: ref_cosine(p, z, 'simsiam'),
}


def inputs(case, n=8, d=16, extra=()):
  """(a, b, *extra): float64 arrays holding float32 values, for one case.

  b ~ a so positives are positive; the extra arrays (MoCo's queue) get unit
  rows, as MoCo keeps them.
  """
  rng = np.random.default_rng(CASES.index(case))
  a = rng.normal(size=(2 if case == 'batch_of_2' else n, d))
  if case == 'collapsed':
    a = np.repeat(a[:1], n, 0)
  b = a + 0.7 * rng.normal(size=a.shape) if case in CASES[:2] else a.copy()
  rest = [unit_rows(np.repeat(a[:1], s[0], 0) if case == 'collapsed'
                    else rng.normal(size=s)) for s in extra]
  return [x.astype(np.float32).astype(np.float64) for x in [a, b, *rest]]


def check(got_loss, got, want, skip=()):
  # atol: BYOL's 2 - 2 cos of identical views is 0 +- float32 ulp of 2.
  np.testing.assert_allclose(float(got_loss), want['loss'], rtol=RTOL, atol=1e-6)
  assert set(got) == set(want)
  for key in set(want) - set(skip):
    assert got[key].dtype == jnp.float32 and got[key].shape == (), key
    np.testing.assert_allclose(float(got[key]), want[key], rtol=RTOL,
                               atol=1e-6, err_msg=key)


def f32(*xs):
  return [jnp.asarray(x, jnp.float32) for x in xs]


@functools.cache
def compiled(fn, grad=False):
  """One jitted loss, or its gradient for every argument, per function.

  Reused across tests: a compile costs ~0.5 s here, eager dispatch more.
  """
  if not grad:
    return jax.jit(fn)
  return jax.jit(lambda *a: jax.grad(lambda *b: fn(*b)[0],
                                     argnums=tuple(range(len(a))))(*a))


# Collapse ties every logit: accuracy is then decided by float32 rounding.
TIED = {'collapsed': ('accuracy',)}


@pytest.mark.parametrize('case', CASES)
def test_simclr_matches_reference(case):
  z1, z2 = inputs(case)
  loss, metrics = compiled(simclr_loss)(*f32(z1, z2), 0.1)
  check(loss, metrics, ref_simclr(z1, z2, 0.1), skip=TIED.get(case, ()))
  check(*compiled(simclr_loss)(*f32(z1, z2), 0.5), ref_simclr(z1, z2, 0.5),
        skip=TIED.get(case, ()))


@pytest.mark.parametrize('n', [2, 6])
def test_simclr_closed_form_for_orthogonal_embeddings(n):
  """Identical views, the N examples orthonormal (then scaled and rotated).

  Each anchor's positive has cosine 1 and its 2N - 2 negatives cosine 0, so
  loss = -log(e^{1/T} / (e^{1/T} + (2N-2) e^0)) = log(1 + (2N-2) e^{-1/T}).
  log(1 + (2N-2) e^{-1/T} / e^{1/T}) needs every negative at cosine -1,
  possible only for N = 2 with antipodal examples: checked too.
  """
  t = 0.1
  rotation, _ = np.linalg.qr(np.random.default_rng(n).normal(size=(8, 8)))
  z = (3.0 * rotation[:n]).astype(np.float32)
  loss, metrics = compiled(simclr_loss)(z, z, t)
  np.testing.assert_allclose(float(loss), np.log1p((2 * n - 2) * np.exp(-1 / t)),
                             rtol=RTOL)
  assert float(metrics['accuracy']) == 1.0
  antipodal = np.stack([z[0], -z[0]])
  loss, _ = compiled(simclr_loss)(antipodal, antipodal, t)
  np.testing.assert_allclose(float(loss), np.log1p(2 * np.exp(-1 / t) / np.exp(1 / t)),
                             rtol=RTOL)


@pytest.mark.parametrize('case', CASES)
def test_moco_matches_reference(case):
  q, k, queue = inputs(case, extra=[(24, 16)])
  loss, metrics = compiled(moco_loss)(*f32(q, k, queue))
  check(loss, metrics, ref_moco(q, k, queue), skip=TIED.get(case, ()))


@pytest.mark.parametrize('fn', [byol_loss, simsiam_loss])
@pytest.mark.parametrize('case', CASES)
def test_cosine_losses_match_reference(fn, case):
  p, z = inputs(case)
  check(*compiled(fn)(*f32(p, z)), REFERENCE[fn](p, z))


@pytest.mark.parametrize('case, n, d', [
    ('random', 12, 6), ('random', 6, 12), ('batch_of_2', 2, 8),
    ('identical', 8, 8), ('collapsed', 6, 8)])
def test_barlow_twins_matches_reference(case, n, d):
  z1, z2 = inputs(case, n, d)
  loss, metrics = compiled(barlow_twins_loss)(*f32(z1, z2), 0.0051)
  assert np.isfinite(float(loss))
  check(loss, metrics, ref_barlow(z1, z2))
  loss, _ = compiled(barlow_twins_loss)(*f32(z1, z2), 0.3)
  np.testing.assert_allclose(float(loss), ref_barlow(z1, z2, 0.3)['loss'], rtol=RTOL)


def finite_difference(f, x, h=1e-6):
  """Central differences in float64: error ~1e-9 here, far under RTOL."""
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[idx] += h
    down[idx] -= h
    g[idx] = (f(up) - f(down)) / (2 * h)
  return g


# Per loss: the arguments that get no gradient (stop_gradient inside).
STOPPED = {simclr_loss: (), moco_loss: (1, 2), byol_loss: (1,),
           simsiam_loss: (1,), barlow_twins_loss: ()}


def gradient_errors(fn):
  """Per argument: max |jax - finite difference| / max |finite difference|.

  None for a stop-gradient argument, after checking its gradient is exactly 0.
  """
  args = inputs('random', 4, 5, extra=[(7, 5)] if fn is moco_loss else [])
  ref, stopped, name = REFERENCE[fn], STOPPED[fn], fn.__name__
  grads = compiled(fn, grad=True)(*f32(*args))
  errors = []
  for i, got in enumerate(grads):
    if i in stopped:
      assert np.all(np.asarray(got) == 0.0), (name, i)
      errors.append(None)
      continue
    want = finite_difference(
        lambda x, i=i: ref(*args[:i], x, *args[i + 1:])['loss'], args[i])
    errors.append(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))
  return errors


@pytest.mark.parametrize('fn', list(STOPPED), ids=lambda fn: fn.__name__)
def test_gradients_match_finite_differences_and_stop_gradient_is_zero(fn):
  for i, error in enumerate(gradient_errors(fn)):
    assert error is None or error < RTOL, (fn.__name__, i, error)


@pytest.mark.parametrize('fn', [byol_loss, simsiam_loss, simclr_loss])
def test_zero_rows_give_finite_loss_and_gradient(fn):
  p, z = inputs('random', 4, 5)
  p[0], z[1] = 0.0, 0.0
  loss, metrics = compiled(fn)(*f32(p, z))
  assert all(np.isfinite(float(v)) for v in metrics.values())
  for g in compiled(fn, grad=True)(*f32(p, z)):
    assert np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(float(loss), REFERENCE[fn](p, z)['loss'], rtol=RTOL)


def test_bfloat16_inputs_are_computed_in_float32():
  bf = [jnp.asarray(x, jnp.bfloat16) for x in inputs('random', extra=[(24, 16)])]
  rounded = [np.asarray(x.astype(jnp.float32), np.float64) for x in bf]
  for fn, ref in REFERENCE.items():
    n = 3 if fn is moco_loss else 2
    loss, _ = compiled(fn)(*bf[:n])
    assert loss.dtype == jnp.float32, fn.__name__
    np.testing.assert_allclose(float(loss), ref(*rounded[:n])['loss'], rtol=RTOL,
                               err_msg=fn.__name__)


@pytest.mark.parametrize('fn, shapes, message', [
    (simclr_loss, [(4, 3), (4, 2)], 'simclr_loss: z1 and z2'),
    (simclr_loss, [(5,), (5,)], 'simclr_loss: z1 must have shape'),
    (simclr_loss, [(1, 3), (1, 3)], 'simclr_loss: z1 has batch size 1'),
    (moco_loss, [(4, 3), (4, 3), (6, 2)], 'moco_loss: queue has width 2'),
    (moco_loss, [(4, 3), (5, 3), (6, 3)], 'moco_loss: q and k'),
    (moco_loss, [(4, 3), (4, 3), (3,)], 'moco_loss: queue must have shape'),
    (byol_loss, [(4, 3), (4, 2)], 'byol_loss: p and z'),
    (simsiam_loss, [(4, 3, 2), (4, 3, 2)], 'simsiam_loss: p must have shape'),
    (barlow_twins_loss, [(4, 3), (3, 3)], 'barlow_twins_loss: z1 and z2'),
    (barlow_twins_loss, [(1, 3), (1, 3)], 'barlow_twins_loss: z1 has batch'),
])
def test_rejects_bad_shapes(fn, shapes, message):
  with pytest.raises(ValueError, match=message):
    fn(*[np.ones(s, np.float32) for s in shapes])


def test_one_device_equals_eight_sharded_devices():
  """Batch split over 8 emulated CPU devices: global statistics, same loss."""
  script = textwrap.dedent("""
      import json, jax, numpy as np
      from jax.sharding import NamedSharding, PartitionSpec as P
      from mlvicx_jax.losses import barlow_twins_loss, moco_loss, simclr_loss
      assert jax.device_count() == 8, jax.devices()
      args = [np.asarray(x, np.float32) for x in json.loads(input())]
      mesh = jax.make_mesh((8,), ('data',),
                           axis_types=(jax.sharding.AxisType.Auto,))
      batch, whole = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
      a, b, queue = [jax.device_put(x, s)
                     for x, s in zip(args, (batch, batch, whole))]
      assert len(a.addressable_shards) == 8 and a.addressable_shards[0].data.shape[0] == 2
      out = {}
      for name, fn, n in (('simclr', simclr_loss, 2), ('moco', moco_loss, 3),
                          ('barlow', barlow_twins_loss, 2)):
        out[name] = [float(jax.jit(fn)(*args[:n])[0]),
                     float(jax.jit(fn)(*(a, b, queue)[:n])[0])]
      print(json.dumps(out))
  """)
  a, b, queue = inputs('random', 16, 12, extra=[(20, 12)])
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')
  out = subprocess.run([sys.executable, '-c', script], env=env, check=True, cwd=REPO,
                       capture_output=True, text=True,
                       input=json.dumps([a.tolist(), b.tolist(), queue.tolist()]))
  got = json.loads(out.stdout.strip().splitlines()[-1])
  want = {'simclr': ref_simclr(a, b), 'moco': ref_moco(a, b, queue),
          'barlow': ref_barlow(a, b)}
  for name, (single, sharded) in got.items():
    np.testing.assert_allclose(sharded, single, rtol=RTOL, err_msg=name)
    np.testing.assert_allclose(single, want[name]['loss'], rtol=RTOL,
                               err_msg=name)
