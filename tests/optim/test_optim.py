"""LARS and learning-rate schedules against numpy / math transcriptions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mlvicx_jax.optim import lars
from mlvicx_jax.optim import scaled_lr
from mlvicx_jax.optim import warmup_cosine_schedule

# --- LARS ----------------------------------------------------------------

STEPS = 6
MOMENTUM = 0.9
ETA = 0.02
# Large enough that decay visibly changes the result over a few steps.
WEIGHT_DECAY = 0.1


def lr_at(count):
  """A learning rate that changes every step, jnp-traceable."""
  return 0.3 + 0.2 * count


def make_problem(seed=0):
  """Nested (flax-like) params and a fixed gradient for each step.

  `zero_init` has |p| = 0 at the first step, `no_grad` always gets a zero
  gradient, and the biases are 1-d (excluded from decay and trust ratio).
  """
  rng = np.random.default_rng(seed)
  params = {
      'dense': {'kernel': rng.normal(size=(4, 3)),
                'bias': rng.normal(size=(3,))},
      'zero_init': {'kernel': np.zeros((3, 3))},
      'no_grad': {'kernel': rng.normal(size=(2, 5)),
                  'bias': rng.normal(size=(5,))},
  }
  grads = []
  for _ in range(STEPS):
    g = jax.tree_util.tree_map(lambda p: rng.normal(size=p.shape), params)
    g['no_grad'] = jax.tree_util.tree_map(np.zeros_like, params['no_grad'])
    grads.append(g)
  return params, grads


def flat(tree):
  return {jax.tree_util.keystr(path): np.asarray(leaf, np.float64)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def numpy_lars(params, grads, lrs, decay, adapt, weight_decay, eta=ETA,
               momentum=MOMENTUM, lr_inside_momentum=False):
  """SPEC section 2 LARS in float64; params/grads/masks as flat dicts.

  With lr_inside_momentum the learning rate enters the buffer instead
  (optax.lars' order), which must give a different trajectory.
  """
  params = {k: v.copy() for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  for step_grads, lr in zip(grads, lrs):
    for k, p in params.items():
      g = step_grads[k].copy()
      if decay[k]:
        g = g + weight_decay * p
      if adapt[k]:
        p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
        g = g * (eta * p_norm / g_norm if p_norm > 0 and g_norm > 0 else 1.0)
      if lr_inside_momentum:
        mu[k] = momentum * mu[k] + lr * g
        params[k] = p - mu[k]
      else:
        mu[k] = momentum * mu[k] + g
        params[k] = p - lr * mu[k]
  return params


def run_optax(tx, params, grads):
  """Applies `tx` for every gradient inside one jitted step function."""
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32),
                                  params)
  state = tx.init(params)

  @jax.jit
  def step(params, state, g):
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  for g in grads:
    g = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), g)
    params, state = step(params, state, g)
  return params, state


def assert_trees_close(got, want, rtol=2e-5, atol=1e-6):
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol,
                               err_msg=k)


def max_abs_difference(a, b):
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def test_lars_matches_numpy_with_changing_lr_and_default_masks():
  params, grads = make_problem()
  lrs = [lr_at(t) for t in range(STEPS)]  # first update uses count 0
  not_1d = {k: v.ndim != 1 for k, v in flat(params).items()}
  want = numpy_lars(flat(params), [flat(g) for g in grads], lrs,
                    decay=not_1d, adapt=not_1d, weight_decay=WEIGHT_DECAY)

  got, state = run_optax(
      lars(lr_at, momentum=MOMENTUM, eta=ETA, weight_decay=WEIGHT_DECAY),
      params, grads)
  assert int(state.count) == STEPS
  assert_trees_close(flat(got), want)

  # The test can tell the two orders apart, and optax.lars is the other one.
  swapped = numpy_lars(flat(params), [flat(g) for g in grads], lrs,
                       decay=not_1d, adapt=not_1d, weight_decay=WEIGHT_DECAY,
                       lr_inside_momentum=True)
  assert max_abs_difference(swapped, want) > 1e-2
  mask = lambda p: jax.tree_util.tree_map(lambda x: x.ndim != 1, p)
  optax_lars, _ = run_optax(
      optax.lars(lr_at, weight_decay=WEIGHT_DECAY, weight_decay_mask=mask,
                 trust_coefficient=ETA, trust_ratio_mask=mask,
                 momentum=MOMENTUM),
      params, grads)
  assert max_abs_difference(flat(optax_lars), want) > 1e-2


def test_lars_zero_gradient_without_decay_leaves_param_unchanged():
  # With no decay the no_grad kernel has |g| = 0, so q = 1 and mu stays 0.
  params, grads = make_problem(seed=1)
  got, _ = run_optax(lars(lr_at, momentum=MOMENTUM, eta=ETA, weight_decay=0.0),
                     params, grads)
  np.testing.assert_array_equal(np.asarray(got['no_grad']['kernel']),
                                params['no_grad']['kernel'].astype(np.float32))
  not_1d = {k: v.ndim != 1 for k, v in flat(params).items()}
  want = numpy_lars(flat(params), [flat(g) for g in grads],
                    [lr_at(t) for t in range(STEPS)], decay=not_1d,
                    adapt=not_1d, weight_decay=0.0)
  assert_trees_close(flat(got), want)


def test_lars_masks_as_pytrees_and_callables():
  params, grads = make_problem(seed=2)
  # Decay only on dense/kernel; trust ratio on every 2-d param but no_grad.
  decay_tree = {'dense': {'kernel': True, 'bias': False},
                'zero_init': {'kernel': False},
                'no_grad': {'kernel': False, 'bias': False}}

  def ratio_fn(p):
    mask = jax.tree_util.tree_map(lambda x: x.ndim == 2, p)
    mask['no_grad']['kernel'] = False
    return mask

  got, _ = run_optax(
      lars(lr_at, momentum=MOMENTUM, eta=ETA, weight_decay=WEIGHT_DECAY,
           weight_decay_mask=decay_tree, trust_ratio_mask=ratio_fn),
      params, grads)
  want = numpy_lars(flat(params), [flat(g) for g in grads],
                    [lr_at(t) for t in range(STEPS)], decay=flat(decay_tree),
                    adapt=flat(ratio_fn(params)), weight_decay=WEIGHT_DECAY)
  assert_trees_close(flat(got), want)


def test_lars_constant_lr_and_vicreg_defaults():
  params, grads = make_problem(seed=3)
  not_1d = {k: v.ndim != 1 for k, v in flat(params).items()}
  got, _ = run_optax(lars(0.05), params, grads)
  want = numpy_lars(flat(params), [flat(g) for g in grads], [0.05] * STEPS,
                    decay=not_1d, adapt=not_1d, weight_decay=1e-6, eta=0.001,
                    momentum=0.9)
  assert_trees_close(flat(got), want)


def test_lars_first_update_uses_schedule_at_count_zero():
  # A warmup schedule is 0 at count 0: the first update must not move params.
  params = {'w': jnp.ones((2, 2))}
  tx = lars(lambda count: 1.0 * count)
  state = tx.init(params)
  updates, state = tx.update({'w': jnp.ones((2, 2))}, state, params)
  np.testing.assert_array_equal(np.asarray(updates['w']), np.zeros((2, 2)))
  updates, _ = tx.update({'w': jnp.ones((2, 2))}, state, params)
  assert np.all(np.asarray(updates['w']) < 0)


def test_lars_errors():
  with pytest.raises(ValueError, match='learning_rate'):
    lars(-0.1)
  tx = lars(0.1)
  params = {'w': jnp.ones((2, 2))}
  state = tx.init(params)
  with pytest.raises(ValueError, match='params'):
    tx.update(params, state)
  with pytest.raises(ValueError, match='weight_decay_mask'):
    lars(0.1, weight_decay_mask={'v': True}).update(params, state, params)


# --- schedules -----------------------------------------------------------


def official_mlvicx_lr(step, peak, warmup, total, end_factor):
  """MLVICX official code: the cosine phase is divided by total steps."""
  if step < warmup:
    return peak * step / warmup
  q = 0.5 * (1 + math.cos(math.pi * (step - warmup) / total))
  return peak * q + end_factor * peak * (1 - q)


def vicreg_lr(step, peak, warmup, total, end_factor):
  """VICReg code: the cosine phase is divided by total - warmup steps."""
  if step < warmup:
    return peak * step / warmup
  q = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
  return peak * q + end_factor * peak * (1 - q)


@pytest.mark.parametrize('cosine_over, reference', [
    ('total', official_mlvicx_lr), ('after_warmup', vicreg_lr)])
@pytest.mark.parametrize('warmup, total', [(20, 300), (0, 50), (7, 8)])
def test_warmup_cosine_matches_transcription(cosine_over, reference, warmup,
                                             total):
  peak, end_factor = 0.8, 0.001
  schedule = warmup_cosine_schedule(peak, warmup, total, end_factor,
                                    cosine_over=cosine_over)
  steps = sorted({0, 1, max(warmup - 1, 0), warmup, warmup + 1,
                  (warmup + total) // 2, total - 1, total}
                 | set(range(0, total + 1, 13)))
  got = jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32))
  want = [reference(s, peak, warmup, total, end_factor) for s in steps]
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-8)
  for s in steps:  # also as a plain python int
    np.testing.assert_allclose(float(schedule(s)),
                               reference(s, peak, warmup, total, end_factor),
                               rtol=2e-6, atol=1e-8)


def test_warmup_cosine_conventions_differ_and_end_values():
  peak, warmup, total = 1.0, 10, 100
  official = warmup_cosine_schedule(peak, warmup, total)
  vicreg = warmup_cosine_schedule(peak, warmup, total,
                                  cosine_over='after_warmup')
  assert float(official(warmup)) == pytest.approx(peak)
  assert float(vicreg(total)) == pytest.approx(0.001 * peak)
  # Official code stops short of the end value: t = 90/100 at the last step.
  assert float(official(total)) > 0.02
  # Past the end the rate holds at the end value (t is capped at 1).
  assert float(vicreg(total + 50)) == pytest.approx(0.001 * peak)
  assert float(official(warmup + total + 500)) == pytest.approx(0.001 * peak)


@pytest.mark.parametrize('kwargs, message', [
    (dict(peak_lr=-1.0, warmup_steps=1, total_steps=10), 'peak_lr'),
    (dict(peak_lr=1.0, warmup_steps=11, total_steps=10), 'exceeds'),
    (dict(peak_lr=1.0, warmup_steps=-1, total_steps=10), 'warmup_steps'),
    (dict(peak_lr=1.0, warmup_steps=0, total_steps=0), 'total_steps'),
    (dict(peak_lr=1.0, warmup_steps=1, total_steps=10, cosine_over='epoch'),
     'cosine_over'),
    (dict(peak_lr=1.0, warmup_steps=10, total_steps=10,
          cosine_over='after_warmup'), 'after_warmup'),
])
def test_warmup_cosine_rejects_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    warmup_cosine_schedule(**kwargs)


def test_scaled_lr():
  assert scaled_lr(0.2, 64) == pytest.approx(0.05)
  assert scaled_lr(0.2, 256) == pytest.approx(0.2)
  with pytest.raises(ValueError, match='batch_size'):
    scaled_lr(0.2, 0)
  with pytest.raises(ValueError, match='base_lr'):
    scaled_lr(-0.2, 64)
