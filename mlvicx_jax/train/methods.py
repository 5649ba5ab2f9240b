"""The pretraining methods as objectives of one train step (pure functions).

An Objective turns (params, batch_stats, extra, view1, view2, step) into a
loss; `extra` is the state that is not trained by gradients: BYOL's and
MoCo's momentum target network and MoCo's key queue. It lives in the train
state beside the parameters, replicated like them (the 65,536 x 128 queue
is 32 MB), and is checkpointed with them.

BatchNorm is global over the batch everywhere (SyncBN under sharding). MoCo
v2's shuffle-BN exists to stop each GPU's BatchNorm from leaking which key
belongs to which query within one GPU's small batch; with statistics over
the whole global batch the leak is the same 1/N share for every example, the
remedy SimCLR adopts (global BN), so keys are not shuffled here.
"""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from mlvicx_jax import losses
from mlvicx_jax import vocabulary
from mlvicx_jax.optim import ema

METHODS = vocabulary.METHODS
VICREG_TERMS = ('global/inv', 'global/var', 'global/cov', 'local/inv', 'local/var',
                'local/cov', 'loss')


@dataclasses.dataclass(frozen=True)
class Objective:
  """loss(params, batch_stats, extra, view1, view2, step)
       -> (loss, (metrics, batch_stats, extra));
  after(extra, new_params, step) -> extra, once the optimiser has stepped;
  init(variables, rng) -> extra; terms: metrics to blame, in order, for a NaN.
  """
  loss: Callable
  after: Callable = lambda extra, params, step: extra
  init: Callable = lambda variables, rng: {}
  terms: tuple[str, ...] = ('loss',)


def forward_two_views(model, params, batch_stats, view1, view2):
  """Both views in one call: the trunk once per view (BN statistics per view),
  the heads once on both (one matmul per layer, BN per view); running stats
  chained view1 -> view2 as the official code's two sequential forward calls."""
  out, new = model.apply({'params': params, 'batch_stats': batch_stats}, (view1, view2),
                         train=True, mutable=['batch_stats'])
  first, second = (jax.tree.map(lambda o, i=i: o[i], out) for i in (0, 1))
  return first, second, new['batch_stats']


def _prefixed(prefix: str, metrics: dict) -> dict:
  return {('loss' if k == 'loss' else f'{prefix}/{k}'): v for k, v in metrics.items()}


def _average(prefix: str, pairs) -> tuple[jax.Array, dict]:
  """Mean loss and metrics of the two directions of a symmetrised loss."""
  (l1, m1), (l2, m2) = pairs
  metrics = jax.tree.map(lambda a, b: (a + b) / 2, m1, m2)
  return (l1 + l2) / 2, _prefixed(prefix, metrics)


def _online_only(model, score, terms=('loss',)) -> Objective:
  """A method without momentum state: score(out1, out2) -> (loss, metrics)."""
  def loss(params, batch_stats, extra, view1, view2, step):
    del step
    out1, out2, batch_stats = forward_two_views(model, params, batch_stats, view1, view2)
    value, metrics = score(out1, out2)
    return value, (metrics, batch_stats, extra)
  return Objective(loss=loss, terms=terms)


def _vicreg(model, cfg) -> Objective:
  return _online_only(model, lambda out1, out2: losses.mlvicx_loss(
      out1.get('z'), out2.get('z'), out1.get('m'), out2.get('m'),
      lam=cfg.lam, use_global=cfg.use_global, use_local=cfg.use_local,
      sim_coeff=cfg.sim_coeff, std_coeff=cfg.std_coeff, cov_coeff=cfg.cov_coeff, eps=cfg.eps),
                      VICREG_TERMS)


def _barlow_twins(model, cfg) -> Objective:
  def score(out1, out2):
    value, metrics = losses.barlow_twins_loss(out1['z'], out2['z'], lambd=cfg.lambd)
    return value, _prefixed('barlow', metrics)
  return _online_only(model, score, ('barlow/on_diagonal', 'barlow/off_diagonal', 'loss'))


def _simclr(model, cfg) -> Objective:
  def score(out1, out2):
    value, metrics = losses.simclr_loss(out1['z'], out2['z'], temperature=cfg.temperature)
    return value, _prefixed('simclr', metrics)
  return _online_only(model, score)


def _simsiam(model, cfg) -> Objective:
  del cfg
  return _online_only(model, lambda out1, out2: _average(
      'simsiam', (losses.simsiam_loss(out1['p'], out2['z']),
                  losses.simsiam_loss(out2['p'], out1['z']))))


def _init_target(variables, rng):
  del rng
  return {'target': {'params': variables['params'], 'batch_stats': variables['batch_stats']}}


def _target_two_views(model, target, view1, view2):
  """The momentum network on both views, in training mode (its own BN chain)."""
  out1, out2, batch_stats = forward_two_views(model, target['params'], target['batch_stats'],
                                              view1, view2)
  out1, out2 = jax.lax.stop_gradient((out1, out2))
  return out1, out2, dict(target, batch_stats=batch_stats)


def _byol(model, cfg, total_steps: int) -> Objective:
  """BYOL: the loss summed over both directions; the target follows after the step."""
  def loss(params, batch_stats, extra, view1, view2, step):
    del step
    out1, out2, batch_stats = forward_two_views(model, params, batch_stats, view1, view2)
    target1, target2, target = _target_two_views(model, extra['target'], view1, view2)
    mean, metrics = _average('byol', (losses.byol_loss(out1['p'], target2['z']),
                                      losses.byol_loss(out2['p'], target1['z'])))
    metrics['loss'] = 2 * mean  # BYOL sums the two directions
    return 2 * mean, (metrics, batch_stats, dict(extra, target=target))

  def after(extra, params, step):
    tau = ema.target_momentum(step, cfg.momentum, total_steps, cfg.momentum_schedule)
    target = dict(extra['target'], params=ema.ema_update(extra['target']['params'], params, tau))
    return dict(extra, target=target)

  return Objective(loss=loss, after=after, init=_init_target)


def init_queue(rng, size: int, dim: int) -> dict:
  """MoCo's initial queue: random unit rows, and the write position."""
  queue = losses.l2_normalize(jax.random.normal(rng, (size, dim), jnp.float32))
  return {'queue': queue, 'queue_ptr': jnp.zeros((), jnp.int32)}


def enqueue(queue: jax.Array, ptr: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Overwrites the oldest len(keys) rows (FIFO); the size is a multiple of the batch."""
  keys = jax.lax.stop_gradient(keys).astype(queue.dtype)
  queue = jax.lax.dynamic_update_slice(queue, keys, (ptr, 0))
  return queue, (ptr + keys.shape[0]) % queue.shape[0]


def _moco_v2(model, cfg, total_steps: int) -> Objective:
  """MoCo v2 in the paper's order: the key encoder takes its momentum step
  from the current query encoder, then encodes the keys; the queries of view1
  are scored against their keys (view2) and the queue, which then takes the keys.
  """
  def loss(params, batch_stats, extra, view1, view2, step):
    momentum = ema.target_momentum(step, cfg.momentum, total_steps, cfg.momentum_schedule)
    target = dict(extra['target'], params=ema.ema_update(
        extra['target']['params'], params, momentum))
    query, new = model.apply({'params': params, 'batch_stats': batch_stats}, view1,
                             train=True, mutable=['batch_stats'])
    key, new_target = model.apply(target, view2, train=True, mutable=['batch_stats'])
    key = jax.lax.stop_gradient(losses.l2_normalize(key['z']))
    value, metrics = losses.moco_loss(query['z'], key, extra['queue'],
                                      temperature=cfg.temperature)
    queue, ptr = enqueue(extra['queue'], extra['queue_ptr'], key)
    target = dict(target, batch_stats=new_target['batch_stats'])
    extra = dict(extra, target=target, queue=queue, queue_ptr=ptr)
    return value, (_prefixed('moco', metrics), new['batch_stats'], extra)

  def init(variables, rng):
    head = variables['params']['global_head']
    width = head[f'linear{len(head)}']['kernel'].shape[-1]  # linear1..n, no other children
    return dict(_init_target(variables, rng), **init_queue(rng, cfg.queue_size, width))

  return Objective(loss=loss, init=init)


def build(method: str, loss_cfg, model, total_steps: int) -> Objective:
  """The objective of `method` (config.method) with the constants in `loss_cfg`
  (config.loss); total_steps sets the momentum schedule of BYOL and MoCo."""
  if method in ('mlvicx', 'vicreg'):
    return _vicreg(model, loss_cfg)
  if method == 'barlow_twins':
    return _barlow_twins(model, loss_cfg)
  if method == 'simclr':
    return _simclr(model, loss_cfg)
  if method == 'simsiam':
    return _simsiam(model, loss_cfg)
  if method == 'byol':
    return _byol(model, loss_cfg, total_steps)
  if method == 'moco_v2':
    return _moco_v2(model, loss_cfg, total_steps)
  raise ValueError(f'unknown method {method!r}; expected one of {METHODS}')
