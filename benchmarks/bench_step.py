"""The MLVICX train step built exactly as train/loop.py builds it, for the benchmarks.

configs/nih.py, make_optimizer, methods.build, the data mesh, donation, and
(by default) the two views made inside the step from uint8 images, as
aug.on='device' does. Used by accelerator.py and context_overhead.py.
"""
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mlvicx_jax import config_files  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.data import device_augment  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.train import loop  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.train import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.train.step import TrainState, make_train_step  # pylint: disable=g-import-not-at-top,wrong-import-position


def pretraining_config(variant: str, image_size: int, per_device_batch: int, dtype: str,
                       remat: str = 'none', **model_fields):
  """configs/nih.py with the benchmark's shapes; device augmentation, as on accelerators."""
  config = config_files.load_file(os.path.join(REPO, 'configs', 'nih.py'), variant)
  config.image_size = image_size
  config.global_batch_size = per_device_batch * jax.device_count()
  config.aug.on = 'device'
  config.model.dtype = dtype
  config.model.remat = remat
  config.model.update(model_fields)
  if not config.model.multilevel:
    config.loss.use_local = False
  return config


class Step:
  """The train step, state and a batch built exactly as train/loop.py builds them."""

  def __init__(self, config, stored_size: int, mesh=None, total_steps: int = 100_000,
               device_views: bool = True):
    self.config = config
    self.mesh = mesh or loop.make_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P(loop.DATA_AXIS))
    tx, schedule = loop.make_optimizer(config, steps_per_epoch=1000, total_steps=total_steps)
    model = models.build_model(config.model)
    objective = methods.build(config.method, config.loss, model, total_steps)

    def init_state(rng):
      variables = loop.init_variables(model, config, rng)
      return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                        batch_stats=variables['batch_stats'],
                        opt_state=tx.init(variables['params']),
                        extra=objective.init(variables, jax.random.fold_in(rng, 1)))

    self._init = jax.jit(init_state, out_shardings=self.replicated)
    make_views = None
    if device_views:
      make_views = functools.partial(device_augment.two_views, seed=config.seed,
                                     aug=config.aug.to_dict(), size=config.image_size)
    self.jitted = jax.jit(make_train_step(model, tx, schedule, objective, make_views),
                          in_shardings=(self.replicated, self.batch_sharding, self.replicated),
                          out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    rng = np.random.default_rng(0)
    batch = config.global_batch_size
    if device_views:
      self.host_batch = {
          'image': rng.integers(0, 256, (batch, stored_size, stored_size, 1), np.uint8),
          'position': np.arange(batch, dtype=np.uint32)}
    else:  # views made beforehand (the host path): only the model's work is timed
      shape = (batch, config.image_size, config.image_size, 3)
      self.host_batch = {k: rng.standard_normal(shape, np.float32) for k in ('view1', 'view2')}
    self.scale = np.float32(1.0)

  def state(self):
    return self._init(jax.random.PRNGKey(self.config.seed))

  def batch(self):
    return {k: jax.device_put(v, self.batch_sharding) for k, v in self.host_batch.items()}

  def abstract_args(self):
    state = jax.eval_shape(self._init, jax.random.PRNGKey(self.config.seed))
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                        sharding=self.replicated), state)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding)
             for k, v in self.host_batch.items()}
    return state, batch, self.scale

  def lower(self):
    return self.jitted.lower(*self.abstract_args())

  def compile(self):
    """(compiled, seconds from trace to executable)."""
    t0 = time.perf_counter()
    compiled = self.lower().compile()
    return compiled, time.perf_counter() - t0


def compiled_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', float('nan')))


def compiled_peak_bytes(compiled) -> int:
  """Arguments + outputs + temporaries, less what donation aliases: the step's footprint."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def time_steps(compiled, step: Step, steps: int):
  """(median seconds, step-0 loss, step-0 grad norm) from a fresh state."""
  state, batch = step.state(), step.batch()
  state, metrics = compiled(state, batch, step.scale)
  first = jax.device_get(metrics)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, step.scale)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  median = float(np.median(times)) if times else float('nan')
  return median, float(first['loss']), float(first['grad_norm'])


def device_memory():
  """(bytes limit, peak bytes in use) of device 0, where the backend keeps them (not CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get('bytes_limit'), stats.get('peak_bytes_in_use')


def memory_limit() -> int:
  """What a step may use: the device's memory, or on CPU the host's available memory."""
  limit, _ = device_memory()
  if limit:
    return int(limit)
  import psutil  # pylint: disable=g-import-not-at-top
  return int(psutil.virtual_memory().available)
