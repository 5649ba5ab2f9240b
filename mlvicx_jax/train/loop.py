"""The pretraining loop: data-parallel jit over a mesh, exact resume, logging.

One code path from one CPU to a pod: parameters replicated, batch sharded
along the mesh's `data` axis, each process feeding its own slice of the
global batch.
"""
import functools
import json
import os
import signal
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mlvicx_jax import checkpoint
from mlvicx_jax import models
from mlvicx_jax import optim
from mlvicx_jax.data import augment
from mlvicx_jax.data import device_augment
from mlvicx_jax.data import sources
from mlvicx_jax.train import compile_cache
from mlvicx_jax.train import checkpointing
from mlvicx_jax.train import config_check
from mlvicx_jax.train import data as train_data
from mlvicx_jax.train import methods
from mlvicx_jax.train import metrics_log
from mlvicx_jax.train import monitor
from mlvicx_jax.train import nonfinite
from mlvicx_jax.train import resume
from mlvicx_jax.train import workdir_lock
from mlvicx_jax.train.step import TrainState, make_train_step

DATA_AXIS = 'data'


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D data mesh over every device of every process.

  Auto axes: with jax's default Explicit axes, z.T @ z over the sharded
  batch would be rejected instead of all-reduced.
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def make_optimizer(config, steps_per_epoch: int, total_steps: int):
  o = config.optim
  warmup = int(round(o.warmup_epochs * steps_per_epoch))
  warmup = min(warmup, total_steps)
  schedule = optim.warmup_cosine_schedule(
      optim.scaled_lr(o.base_lr, config.global_batch_size), warmup, total_steps,
      end_factor=o.end_factor, cosine_over=o.cosine_over)
  if o.optimizer == 'lars':
    tx = optim.lars(schedule, momentum=o.momentum, eta=o.eta, weight_decay=o.weight_decay)
  elif o.optimizer == 'sgd':  # torch.optim.SGD: decay on every parameter, lr outside the buffer
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay),
                     optax.sgd(schedule, momentum=o.momentum))
  else:  # 'adamw': for short runs (the CPU demo), where LARS at small batch barely moves
    tx = optax.adamw(schedule, weight_decay=o.weight_decay, mask=optim.exclude_bias_and_norm)
  return tx, schedule


def init_variables(model, config, rng):
  dummy = jnp.zeros((2, config.image_size, config.image_size, 3), jnp.float32)
  return model.init(rng, dummy, train=False)


def merge_pretrained(variables: dict, path: str) -> tuple[dict, int]:
  """Overwrites the freshly initialised tensors that a checkpoint provides.

  Every imported tensor must exist in the model with the same shape (an
  ImageNet ResNet18 fills the trunk; context blocks and heads keep their
  init). Returns (variables, number of tensors loaded).
  """
  loaded, _, _ = checkpoint.restore_model(path)
  flat_model = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(variables)}
  flat_loaded = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(loaded)}
  for key, value in flat_loaded.items():
    if key not in flat_model:
      raise checkpoint.CheckpointError(f'init_from {path}: tensor {key} does not exist in the model')
    if tuple(value.shape) != tuple(flat_model[key].shape):
      raise checkpoint.CheckpointError(
          f'init_from {path}: {key} has shape {tuple(value.shape)}, the model expects '
          f'{tuple(flat_model[key].shape)}')
  merged = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.asarray(flat_loaded.get(jax.tree_util.keystr(p), v), v.dtype), variables)
  return merged, len(flat_loaded)


def _first_non_finite(metrics: dict, terms) -> str:
  for name in terms:
    if name in metrics and not np.isfinite(metrics[name]):
      return name
  return 'loss'


def _all_processes_sum(count: int) -> int:
  """A collective: every process logs at the same steps."""
  if jax.process_count() == 1:
    return count
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(np.sum(multihost_utils.process_allgather(np.int64(count))))


class _Preemption:
  """SIGTERM sets a flag; the loop saves at the next step boundary and exits."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and exiting.')
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) MLVICX in `workdir`; returns the last logged metrics.

  The workdir is locked for the run (process 0 holds `run.lock`), so a second
  job cannot train into it at the same time.
  """
  config_check.validate(config)
  os.makedirs(workdir, exist_ok=True)
  lock = workdir_lock.WorkdirLock(workdir)
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except workdir_lock.WorkdirLockedError as e:
      error = e
  if not resume.all_processes(error is None):
    raise error or workdir_lock.WorkdirLockedError(
        f'process 0 could not lock {workdir}; see its message')
  previous_cache = compile_cache.current_dir()
  try:
    compile_cache.enable(compile_cache.resolve(config.get('compilation_cache_dir', ''), workdir))
    return _pretrain(config, workdir)
  finally:
    compile_cache.enable(previous_cache)  # the run's cache is not this process's
    lock.release()


def _pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict:
  mesh = make_mesh()
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))

  data_dir = train_data.check_data_dir(config)
  monitor_every = config.monitor.every_steps if 'monitor' in config else 0
  monitored_set = train_data.monitor_dataset(data_dir, config) if monitor_every > 0 else ''
  num_examples = train_data.num_train_examples(data_dir, config)
  steps_per_epoch = num_examples // config.global_batch_size
  if steps_per_epoch == 0:
    raise config_check.ConfigError(
        f'config.global_batch_size: {config.global_batch_size} exceeds the '
        f'{num_examples} training images')
  total_steps = config.num_train_steps if config.num_train_steps > 0 else (
      config.num_epochs * steps_per_epoch)
  tx, schedule = make_optimizer(config, steps_per_epoch, total_steps)
  model = models.build_model(config.model)
  objective = methods.build(config.get('method', 'mlvicx'), config.loss, model, total_steps)

  @jax.jit
  def init_state(rng):
    variables = init_variables(model, config, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                      batch_stats=variables['batch_stats'],
                      opt_state=tx.init(variables['params']),
                      extra=objective.init(variables, jax.random.fold_in(rng, 1)))

  def initial_state() -> TrainState:
    state = jax.jit(init_state, out_shardings=replicated)(jax.random.PRNGKey(config.seed))
    if config.init_from:
      variables, count = merge_pretrained(
          {'params': state.params, 'batch_stats': state.batch_stats}, config.init_from)
      variables = jax.device_put(variables, replicated)
      extra = jax.jit(objective.init, out_shardings=replicated)(
          variables, jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
      state = state.replace(params=variables['params'], batch_stats=variables['batch_stats'],
                            extra=extra)  # a momentum target starts as the loaded network
      logging.info('Initialised %d tensors from %s', count, config.init_from)
    return state

  t0 = time.time()
  abstract_state = jax.eval_shape(init_state, jax.random.PRNGKey(config.seed))
  abstract_state = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract_state)

  data_iter = iter(train_data.pretraining_dataset(data_dir, config))
  meta = {'model_config': checkpoint.config_to_json(config.model), 'source': 'pretraining',
          'config': json.loads(config.to_json_best_effort())}
  rollbacks = []  # nonfinite.Rollback, as recorded in the restored checkpoint

  def check_meta(saved, step):
    resume.check_config_drift(saved.get('config'), config, workdir, step)
    rollbacks[:] = nonfinite.from_meta(saved)

  mngr, state, start = resume.restore_latest(
      lambda: checkpointing.manager(workdir, config),
      lambda m, step: checkpointing.restore(m, step, abstract_state, data_iter),
      check_meta, workdir)
  initial_stream = None
  if start is not None:
    logging.info('Resumed from step %d in %s', start, workdir)
  else:
    state, start = initial_state(), 0
    initial_stream = data_iter.get_state()  # a rollback before the first checkpoint

  make_views = None
  if augment.placement(config.aug) == 'device':
    make_views = functools.partial(device_augment.two_views, seed=config.seed,
                                   aug=config.aug.to_dict(), size=config.image_size)
  inject = config.inject_nan_at_step >= 0
  train_step = jax.jit(make_train_step(model, tx, schedule, objective, make_views, poison=inject),
                       in_shardings=(replicated, batch_sharding, replicated),
                       out_shardings=(replicated, replicated), donate_argnums=0)
  knn_monitor = (monitor.KnnMonitor(config, data_dir, model, monitored_set)
                 if monitor_every > 0 else None)
  monitored = {}  # the latest monitor values, written with the next logged step
  writer = metrics_log.MetricsWriter(workdir, total_steps, initial_step=start)
  preemption = _Preemption()
  saves = checkpointing.GuardedSaves(mngr)
  # Metrics are read one step late, so the host never waits for the step it
  # just dispatched; the previous step is always checked before a save.
  pending = None  # (step, device metrics)
  last = {}
  window = {'start': time.time(), 'steps': 0, 'bad_records': 0}

  def next_batch(step):
    local = next(data_iter)
    skipped = local.pop(sources.SKIPPED_FIELD, None)  # on_bad_record='skip' only
    if skipped is not None:
      window['bad_records'] += int(np.sum(skipped))
    if inject:
      local['poison'] = nonfinite.poison(config, step, step + nonfinite.stream_offset(rollbacks),
                                         len(next(iter(local.values()))))
    return {k: jax.make_array_from_process_local_data(batch_sharding, v)
            for k, v in local.items()}

  def check(step, device_metrics):
    host = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not np.isfinite(host['loss']):
      term = _first_non_finite(host, objective.terms)
      raise nonfinite.NonFiniteStep(step, term, host.get(term))
    return host

  def log(step, host):
    elapsed = max(time.time() - window['start'], 1e-9)
    host['pairs_per_second'] = window['steps'] * config.global_batch_size / elapsed
    host.update(monitored)
    monitored.clear()
    if config.get('on_bad_record', 'stop') == 'skip':  # every process's, since the last line
      host['data/bad_records_skipped'] = float(_all_processes_sum(window['bad_records']))
    writer.write(step, host)
    window.update(start=time.time(), steps=0, bad_records=0)
    return host

  def roll_back(failure: nonfinite.NonFiniteStep):
    """The latest checkpoint (or the initial state) with the failing window skipped."""
    saves.wait()
    restored = mngr.latest_step()
    recorded = [] if restored is None else nonfinite.from_meta(resume.read_meta(mngr, restored))
    rollback = nonfinite.decide(config, failure, rollbacks, restored or 0, recorded)
    if restored is None:
      if initial_stream is None:
        raise nonfinite.NonFiniteLossError(f'{failure}; no checkpoint to roll back to')
      state = initial_state()
      data_iter.set_state(initial_stream)
    else:
      state = checkpointing.restore(mngr, restored, abstract_state, data_iter)
    for _ in range(rollback.skipped_batches):
      next(data_iter)
    rollbacks.append(rollback)
    logging.warning('non-finite loss, rollback %d of %d: %s', len(rollbacks),
                    config.nonfinite_max_rollbacks, rollback.describe())
    writer.event(failure.step, 'nonfinite_rollback', rollback.to_json())
    writer.rewind(rollback.restored_step)
    window.update(start=time.time(), steps=0, bad_records=0)
    return state, rollback.restored_step

  try:
    step = start
    while True:
      try:
        while step < total_steps:
          batch = next_batch(step)
          scale = np.float32(nonfinite.lr_scale(step, rollbacks))
          state, device_metrics = train_step(state, batch, scale)
          if step == start:
            logging.info('First step (with compilation) took %.1fs', time.time() - t0)
          if pending is not None:
            host = check(*pending)
            if pending[0] % config.log_every_steps == 0:
              last = log(pending[0], host)
          pending = (step, device_metrics)
          step += 1
          window['steps'] += 1
          writer.advance()
          if knn_monitor is not None and step % monitor_every == 0:
            began = time.time()
            monitored.update(knn_monitor({'params': state.params,
                                          'batch_stats': state.batch_stats}))
            window['start'] += time.time() - began  # pairs/s counts training only
          preempted = preemption.requested or mngr.reached_preemption(step)
          if step % config.checkpoint_every_steps == 0 or step == total_steps or preempted:
            host = check(*pending)  # never checkpoint a state that followed a NaN
            saves.save(state, data_iter, dict(meta, **nonfinite.to_meta(rollbacks)),
                       force=preempted)
            if preempted:
              saves.wait()
              logging.warning('Stopped at step %d after a preemption signal.', step)
              return dict(log(pending[0], host), preempted=True)
        if pending is not None:
          last = log(pending[0], check(*pending))
        break
      except nonfinite.NonFiniteStep as failure:
        pending = None
        state, step = roll_back(failure)
    saves.wait()
    return last
  finally:
    preemption.restore()
    writer.close()
    saves.close()
