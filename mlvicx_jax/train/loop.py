"""The pretraining loop: data-parallel jit over a mesh, exact resume, logging.

One code path from one CPU to a pod: parameters replicated, batch sharded
along the mesh's `data` axis, each process feeding its own slice of the
global batch.
"""
import contextlib
import functools
import json
import os
import signal
import time

from absl import logging
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from mlvicx_jax import checkpoint
from mlvicx_jax import models
from mlvicx_jax import optim
from mlvicx_jax.data import augment
from mlvicx_jax.data import device_augment
from mlvicx_jax.train import compile_cache
from mlvicx_jax.train import config_check
from mlvicx_jax.train import data as train_data
from mlvicx_jax.train import methods
from mlvicx_jax.train import metrics_log
from mlvicx_jax.train import monitor
from mlvicx_jax.train import resume
from mlvicx_jax.train import workdir_lock
from mlvicx_jax.train.step import TrainState, make_train_step

DATA_AXIS = 'data'


class NonFiniteLossError(FloatingPointError):
  pass


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


def _checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), checkpoint.CHECKPOINT_SUBDIR),
      item_handlers={
          checkpoint.MODEL: ocp.StandardCheckpointHandler(),
          checkpoint.META: ocp.JsonCheckpointHandler(),
          checkpoint.TRAIN: ocp.StandardCheckpointHandler(),
          checkpoint.DATA_ITER: grain.checkpoint.CheckpointHandler(),
      },
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.keep_last_checkpoints,
          keep_period=config.keep_every_steps or None,
          enable_async_checkpointing=config.async_checkpointing,
          cleanup_tmp_directories=True))  # what a failed or killed save left


def _train_item(state: TrainState) -> dict:
  """What resumes training besides the model: the method's extra state only when it has one."""
  item = {'opt_state': state.opt_state, 'step': state.step}
  if state.extra:
    item['extra'] = state.extra
  return item


def _save(mngr, state: TrainState, data_iter, meta: dict, force: bool = False):
  step = int(jax.device_get(state.step))
  mngr.save(step, force=force, args=ocp.args.Composite(**{
      checkpoint.MODEL: ocp.args.StandardSave({'params': state.params,
                                               'batch_stats': state.batch_stats}),
      checkpoint.META: ocp.args.JsonSave(dict(meta, step=step)),
      checkpoint.TRAIN: ocp.args.StandardSave(_train_item(state)),
      checkpoint.DATA_ITER: grain.checkpoint.CheckpointSave(data_iter),
  }))


class _GuardedSaves:
  """Saves through `mngr`; a storage failure (also one surfacing later from an async
  save) shuts the manager down and raises one checkpoint.SaveError naming its step."""

  def __init__(self, mngr):
    self.mngr, self.root = mngr, os.fspath(mngr.directory)
    self.in_flight, self.warned, self.closed = None, False, False
    handler = logging.get_absl_handler()
    if not any(isinstance(f, checkpoint.QuietSaveFailures) for f in handler.filters):
      handler.addFilter(checkpoint.QuietSaveFailures())
    checkpoint.quiet_closed_loop_callbacks()

  def save(self, state: TrainState, data_iter, meta: dict, force: bool = False):
    self.wait()  # the previous async save's failure surfaces here, under its own step
    latest = self.mngr.latest_step()
    if not self.warned and latest is not None and jax.process_index() == 0:
      warning = checkpoint.free_space_warning(
          self.root, checkpoint.directory_size(os.path.join(self.root, str(latest))))
      if warning:
        logging.warning('%s', warning)
        self.warned = True
    self.in_flight = int(jax.device_get(state.step))
    with self._failing(self.in_flight):
      _save(self.mngr, state, data_iter, meta, force=force)

  def wait(self):
    with self._failing(self.in_flight):
      self.mngr.wait_until_finished()
    self.in_flight = None

  def close(self):
    if not self.closed:
      with self._failing(self.in_flight):
        self.closed = True
        self.mngr.close()

  @contextlib.contextmanager
  def _failing(self, step):
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if checkpoint.save_failure_cause(e) is None:
        raise
      self.closed = True
      try:  # joins the background threads, so none writes after the message
        self.mngr.close()
      except Exception:  # pylint: disable=broad-except
        pass  # the same failure again
      # The partial `*.orbax-checkpoint-tmp` folder is left to the next run's manager
      # (cleanup_tmp_directories): removing it here races the writes still in flight.
      raise checkpoint.save_error(self.root, step, e) from None


def _restore(mngr, step: int, abstract_state: TrainState, data_iter) -> TrainState:
  restored = mngr.restore(step, args=ocp.args.Composite(**{
      checkpoint.MODEL: ocp.args.StandardRestore({'params': abstract_state.params,
                                                  'batch_stats': abstract_state.batch_stats}),
      checkpoint.TRAIN: ocp.args.StandardRestore(_train_item(abstract_state)),
      checkpoint.DATA_ITER: grain.checkpoint.CheckpointRestore(data_iter),
  }))
  model, train = restored[checkpoint.MODEL], restored[checkpoint.TRAIN]
  return TrainState(step=train['step'], params=model['params'],
                    batch_stats=model['batch_stats'], opt_state=train['opt_state'],
                    extra=train.get('extra', {}))


def _first_non_finite(metrics: dict, terms) -> str:
  for name in terms:
    if name in metrics and not np.isfinite(metrics[name]):
      return name
  return 'loss'


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

  t0 = time.time()
  abstract_state = jax.eval_shape(init_state, jax.random.PRNGKey(config.seed))
  abstract_state = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract_state)

  data_iter = iter(train_data.pretraining_dataset(data_dir, config))
  meta = {'model_config': checkpoint.config_to_json(config.model), 'source': 'pretraining',
          'config': json.loads(config.to_json_best_effort())}
  mngr, state, start = resume.restore_latest(
      lambda: _checkpoint_manager(workdir, config),
      lambda m, step: _restore(m, step, abstract_state, data_iter),
      lambda saved, step: resume.check_config_drift(saved.get('config'), config, workdir, step),
      workdir)
  if start is not None:
    logging.info('Resumed from step %d in %s', start, workdir)
  else:
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
    start = 0

  make_views = None
  if augment.placement(config.aug) == 'device':
    make_views = functools.partial(device_augment.two_views, seed=config.seed,
                                   aug=config.aug.to_dict(), size=config.image_size)
  train_step = jax.jit(make_train_step(model, tx, schedule, objective, make_views,
                                       config.inject_nan_at_step),
                       in_shardings=(replicated, batch_sharding),
                       out_shardings=(replicated, replicated), donate_argnums=0)
  knn_monitor = (monitor.KnnMonitor(config, data_dir, model, monitored_set)
                 if monitor_every > 0 else None)
  monitored = {}  # the latest monitor values, written with the next logged step
  writer = metrics_log.MetricsWriter(workdir, total_steps, initial_step=start)
  preemption = _Preemption()
  saves = _GuardedSaves(mngr)
  # Metrics are read one step late, so the host never waits for the step it
  # just dispatched; the previous step is always checked before a save.
  pending = None  # (step, device metrics)
  last = {}
  window = {'start': time.time(), 'steps': 0}

  def check(step, device_metrics):
    host = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not np.isfinite(host['loss']):
      term = _first_non_finite(host, objective.terms)
      raise NonFiniteLossError(
          f'non-finite loss at step {step}: {term} = {host.get(term)}; the last '
          f'checkpoint is the last good state ({mngr.latest_step()})')
    return host

  def log(step, host):
    elapsed = max(time.time() - window['start'], 1e-9)
    host['pairs_per_second'] = window['steps'] * config.global_batch_size / elapsed
    host.update(monitored)
    monitored.clear()
    writer.write(step, host)
    window.update(start=time.time(), steps=0)
    return host

  try:
    step = start
    while step < total_steps:
      batch = {k: jax.make_array_from_process_local_data(batch_sharding, v)
               for k, v in next(data_iter).items()}
      state, device_metrics = train_step(state, batch)
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
        monitored.update(knn_monitor({'params': state.params, 'batch_stats': state.batch_stats}))
        window['start'] += time.time() - began  # pairs/s counts training only
      preempted = preemption.requested or mngr.reached_preemption(step)
      if step % config.checkpoint_every_steps == 0 or step == total_steps or preempted:
        host = check(*pending)  # never checkpoint a state that followed a NaN
        saves.save(state, data_iter, meta, force=preempted)
        if preempted:
          saves.wait()
          logging.warning('Stopped at step %d after a preemption signal.', step)
          return dict(log(pending[0], host), preempted=True)
    if pending is not None:
      last = log(pending[0], check(*pending))
    saves.wait()
    return last
  finally:
    preemption.restore()
    writer.close()
    saves.close()
