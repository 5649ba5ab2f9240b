"""The comparison methods: momentum targets and MoCo's queue against numpy
transcriptions of the papers' update rules, and every method's smoke run.

The losses themselves are checked in test_losses_methods.py.
"""
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from mlvicx_jax import models
from mlvicx_jax import pretrained
from mlvicx_jax.optim import ema
from mlvicx_jax.train import loop
from mlvicx_jax.train import methods
from mlvicx_jax.train.step import TrainState, make_train_step

SIZE, BATCH, STEPS, TOTAL = 96, 16, 3, 10
_TRAIN_MODE = {}  # id(model) -> (model, its jitted apply in training mode)


def _leaves(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _run(name, **loss_overrides):
  """STEPS jitted steps of the method's smoke config; every state and batch kept."""
  config = load_config(f'configs/pretrain/{name}.py', 'smoke')
  config.loss.update(loss_overrides)
  model = models.build_model(config.model)
  tx, schedule = loop.make_optimizer(config, steps_per_epoch=4, total_steps=TOTAL)
  objective = methods.build(config.method, config.loss, model, TOTAL)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, SIZE, SIZE, 3)), train=False)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                     batch_stats=variables['batch_stats'], opt_state=tx.init(variables['params']),
                     extra=objective.init(variables, jax.random.PRNGKey(1)))
  step = jax.jit(make_train_step(model, tx, schedule, objective))
  rng = np.random.default_rng(0)
  states, batches, metrics = [jax.device_get(state)], [], []
  for _ in range(STEPS):
    batch = {k: rng.standard_normal((BATCH, SIZE, SIZE, 3)).astype(np.float32)
             for k in ('view1', 'view2')}
    state, m = step(state, batch)
    states.append(jax.device_get(state))
    batches.append(batch)
    metrics.append(jax.device_get(m))
  return config, model, states, batches, metrics


def _forward(model, params, batch_stats, x):
  """The network in training mode (batch statistics), as the papers' forward passes."""
  if id(model) not in _TRAIN_MODE:  # the entry keeps the model alive, so ids are not reused
    _TRAIN_MODE[id(model)] = (model, jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[0]))
  out = _TRAIN_MODE[id(model)][1]({'params': params, 'batch_stats': batch_stats}, x)
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


@pytest.mark.parametrize('name', ['mlvicx', 'byol'])
def test_both_views_in_one_call_equal_two_separate_calls(name):
  """forward_two_views (heads once on both views, BN per view) against two
  whole calls of the model, the official trainer's structure: outputs and
  the running statistics chained view 1 -> view 2."""
  config = load_config(f'configs/pretrain/{name}.py', 'smoke')
  model = models.build_model(config.model)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, SIZE, SIZE, 3)), train=False)
  rng = np.random.default_rng(3)
  view1, view2 = (jnp.asarray(rng.standard_normal((4, SIZE, SIZE, 3)), jnp.float32)
                  for _ in range(2))
  # Running statistics away from their init, so chaining them in the wrong order shows.
  stats = jax.tree.map(lambda s: s + jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype),
                       variables['batch_stats'])
  out1, out2, new_stats = jax.jit(functools.partial(methods.forward_two_views, model))(
      variables['params'], stats, view1, view2)

  @jax.jit
  def separately(params, stats):
    apply = functools.partial(model.apply, train=True, mutable=['batch_stats'])
    ref1, new = apply({'params': params, 'batch_stats': stats}, view1)
    ref2, new = apply({'params': params, 'batch_stats': new['batch_stats']}, view2)
    return ref1, ref2, new['batch_stats']

  ref1, ref2, ref_stats = separately(variables['params'], stats)
  assert set(out1) == set(ref1) and 'z' in out1 and ('m' in out1 or 'p' in out1)
  for got, want in [(out1, ref1), (out2, ref2), (new_stats, ref_stats)]:
    jax.tree.map(lambda g, w: np.testing.assert_allclose(np.asarray(g), np.asarray(w),
                                                         rtol=1e-5, atol=1e-5), got, want)


def test_target_momentum_schedules_are_the_papers():
  total = 37
  for k in (0, 1, 18, 36, 37):
    byol = 1 - (1 - 0.996) * (math.cos(math.pi * k / total) + 1) / 2
    np.testing.assert_allclose(float(ema.target_momentum(k, 0.996, total, 'cosine')), byol,
                               rtol=1e-7)
    assert float(ema.target_momentum(k, 0.999, total, 'constant')) == np.float32(0.999)
  with pytest.raises(ValueError, match='momentum schedule'):
    ema.target_momentum(0, 0.9, 10, 'linear')


def test_byol_target_follows_the_online_network_after_each_step():
  """xi_{k+1} = tau_k xi_k + (1 - tau_k) theta_{k+1} (BYOL Sec. 3.1), and the loss is
  2 - 2 cos(q(view1), z'(view2)) + the same with the views swapped."""
  config, model, states, batches, metrics = _run('byol')
  for k in range(STEPS):
    before, after = states[k], states[k + 1]
    tau = 1 - (1 - config.loss.momentum) * (math.cos(math.pi * k / TOTAL) + 1) / 2
    want = [tau * t + (1 - tau) * p for t, p in zip(_leaves(before.extra['target']['params']),
                                                    _leaves(after.params))]
    for got, expected in zip(_leaves(after.extra['target']['params']), want):
      np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    target = before.extra['target']
    online = [_forward(model, before.params, before.batch_stats, batches[k][v])
              for v in ('view1', 'view2')]
    targets = [_forward(model, target['params'], target['batch_stats'], batches[k][v])
               for v in ('view1', 'view2')]
    loss = sum(np.mean(2 - 2 * np.sum(_unit(online[i]['p']) * _unit(targets[1 - i]['z']), 1))
               for i in (0, 1))
    np.testing.assert_allclose(float(metrics[k]['loss']), loss, rtol=1e-5)
  assert not np.allclose(_leaves(states[-1].extra['target']['params'])[0],
                         _leaves(states[-1].params)[0])


def test_moco_key_encoder_queue_and_loss_in_the_papers_order():
  """Per step (MoCo Algorithm 1): key encoder <- m key + (1 - m) query encoder, keys
  of view2 from it, loss against [k, queue], then the keys replace the oldest rows.
  A queue of two batches wraps on the third step."""
  config, model, states, batches, metrics = _run('moco_v2', queue_size=2 * BATCH)
  m, temperature = config.loss.momentum, config.loss.temperature
  for k in range(STEPS):
    before, after = states[k], states[k + 1]
    key_params = jax.tree.map(lambda t, p: m * np.asarray(t, np.float64)
                              + (1 - m) * np.asarray(p, np.float64),
                              before.extra['target']['params'], before.params)
    for got, expected in zip(_leaves(after.extra['target']['params']), _leaves(key_params)):
      np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    key_params32 = jax.tree.map(lambda x: x.astype(np.float32), key_params)
    keys = _unit(_forward(model, key_params32, before.extra['target']['batch_stats'],
                          batches[k]['view2'])['z'])
    queries = _unit(_forward(model, before.params, before.batch_stats, batches[k]['view1'])['z'])
    queue = np.asarray(before.extra['queue'], np.float64)
    logits = np.concatenate([np.sum(queries * keys, 1, keepdims=True), queries @ queue.T],
                            1) / temperature
    loss = np.mean(np.log(np.sum(np.exp(logits), 1)) - logits[:, 0])
    np.testing.assert_allclose(float(metrics[k]['loss']), loss, rtol=1e-5)
    rows = slice((k * BATCH) % (2 * BATCH), (k * BATCH) % (2 * BATCH) + BATCH)
    np.testing.assert_allclose(np.asarray(after.extra['queue'])[rows], keys, atol=1e-5)
    untouched = np.ones(2 * BATCH, bool)
    untouched[rows] = False
    np.testing.assert_array_equal(np.asarray(after.extra['queue'])[untouched],
                                  np.asarray(before.extra['queue'])[untouched])
    assert int(after.extra['queue_ptr']) == ((k + 1) * BATCH) % (2 * BATCH)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(states[0].extra['queue']), axis=1), 1,
                             rtol=1e-6)


ABLATIONS = {  # config -> (parameter group that must be absent, one that must be present)
    'mlvicx_global_only': ('multilevel', 'global_head'),
    'mlvicx_local_only': ('global_head', 'multilevel'),
    'mlvicx_no_context': ('cbt', 'multilevel'),
}
METHOD_CONFIGS = ('vicreg', 'barlow_twins', 'simclr', 'moco_v2', 'byol', 'simsiam',
                  *ABLATIONS)


@pytest.mark.parametrize('name', METHOD_CONFIGS)
def test_every_method_pretrains_from_its_smoke_config(name, nih_data_dir, tmp_path):
  """The same program, data and checkpoints: a few steps, finite losses, an encoder
  that pretrained.load embeds with, and the ablations' networks as their names say."""
  config = load_config(f'configs/pretrain/{name}.py', 'smoke')
  config.data_dir = nih_data_dir
  config.num_train_steps = config.checkpoint_every_steps = 4
  config.async_checkpointing = False
  workdir = str(tmp_path / name)
  loop.pretrain(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    logged = [json.loads(line) for line in f]
  assert [r['step'] for r in logged] == [0, 1, 2, 3]
  assert all(np.isfinite(r['loss']) for r in logged)
  encoder = pretrained.load(workdir)
  assert encoder.step == 4
  out = encoder.embed(np.zeros((2, SIZE, SIZE, 3), np.float32))
  assert out['features'].shape == (2, config.model.width * 8)
  names = {jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_leaves_with_path(encoder.variables['params'])}
  if name in ABLATIONS:
    absent, present = ABLATIONS[name]
    assert not any(absent in n for n in names) and any(present in n for n in names)
  else:
    assert not any('cbt' in n or 'multilevel' in n for n in names)
    assert out['z'].shape == (2, config.model.global_head[-1])
