r"""Time to the first pretraining step, with an empty and with a filled compilation cache.

  python benchmarks/compile_cache.py                      # official model, 224 px, batch 16
  python benchmarks/compile_cache.py --variant=smoke --image_size=96

Runs the same child twice, each in a fresh process on one new cache
directory (mlvicx_jax.train.compile_cache.enable, default threshold): the
first finds it empty (cold), the second finds what the first wrote (warm).
The child builds the state and the train step as train/loop.py does
(configs/nih.py, build_model, make_optimizer, make_train_step, the same
shardings and donation) and times, from the jit call to the result:
init_state's first call; the train step's first call, split into its
stages (trace + lower, compile or cache read, one step) with the AOT API;
and its second call (one step, for reference).
"process" is the child's whole wall time, imports included.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Crop size of each view.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Pairs per step.')
_VARIANT = flags.DEFINE_string('variant', '', "configs/nih.py variant: '', 'paper' or 'smoke'.")
_CACHE_DIR = flags.DEFINE_string('cache_dir', '', 'Cache directory (must be empty); default: a '
                                 'temporary one, removed afterwards.')
_CHILD = flags.DEFINE_bool('child', False, 'Internal: run one timed process.')


def _config():
  path = os.path.join(REPO, 'configs', 'nih.py')
  spec = importlib.util.spec_from_file_location('nih_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(_VARIANT.value)
  config.image_size = _IMAGE_SIZE.value
  config.global_batch_size = _BATCH_SIZE.value
  return config


def _timed(fn, *args):
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  out = fn(*args)
  jax.block_until_ready(out)
  return out, time.perf_counter() - t0


def child(cache_dir: str) -> dict:
  """One process's times; the cache is enabled before anything is compiled."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mlvicx_jax import models  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import compile_cache  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import loop  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import methods  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train.step import TrainState, make_train_step  # pylint: disable=g-import-not-at-top

  compile_cache.enable(cache_dir)
  config = _config()
  mesh = loop.make_mesh()
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(loop.DATA_AXIS))
  tx, schedule = loop.make_optimizer(config, steps_per_epoch=1000, total_steps=100_000)
  model = models.build_model(config.model)

  def init_state(rng):
    variables = loop.init_variables(model, config, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                      batch_stats=variables['batch_stats'],
                      opt_state=tx.init(variables['params']))

  state, init_s = _timed(jax.jit(init_state, out_shardings=replicated),
                         jax.random.PRNGKey(config.seed))
  step = jax.jit(make_train_step(model, tx, schedule,
                                 methods.build('mlvicx', config.loss, model, 100_000)),
                 in_shardings=(replicated, batch_sharding),
                 out_shardings=(replicated, replicated), donate_argnums=0)
  rng = np.random.default_rng(0)
  shape = (config.global_batch_size, config.image_size, config.image_size, 3)
  batch = {k: jax.device_put(rng.standard_normal(shape, np.float32), batch_sharding)
           for k in ('view1', 'view2')}
  # The jit call's three stages, separately (the persistent cache serves `compile`).
  lowered, lower_s = _timed(step.lower, state, batch)
  compiled, compile_s = _timed(lowered.compile)
  (state, metrics), run_s = _timed(compiled, state, batch)
  (state, metrics), second_s = _timed(compiled, state, batch)
  return {'init_s': init_s, 'lower_s': lower_s, 'compile_s': compile_s, 'run_s': run_s,
          'first_step_s': lower_s + compile_s + run_s, 'second_step_s': second_s,
          'loss': float(metrics['loss']), 'device': str(jax.devices()[0].platform),
          'params': int(sum(x.size for x in jax.tree.leaves(state.params)))}


def _run_child(cache_dir: str) -> dict:
  argv = [sys.executable, os.path.abspath(__file__), '--child', f'--cache_dir={cache_dir}',
          f'--image_size={_IMAGE_SIZE.value}', f'--batch_size={_BATCH_SIZE.value}',
          f'--variant={_VARIANT.value}']
  t0 = time.perf_counter()
  done = subprocess.run(argv, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - t0
  lines = [l for l in done.stdout.splitlines() if l.startswith('RESULT ')]
  if done.returncode or not lines:
    raise RuntimeError(f'child failed ({done.returncode}):\n{done.stderr[-4000:]}')
  return dict(json.loads(lines[-1][len('RESULT '):]), process_s=wall)


def _entries(cache_dir: str) -> tuple[int, float]:
  files = [os.path.join(cache_dir, f) for f in os.listdir(cache_dir) if f.endswith('-cache')]
  return len(files), sum(os.path.getsize(f) for f in files) / 2**20


def main(argv):
  del argv
  if _CHILD.value:
    print('RESULT ' + json.dumps(child(_CACHE_DIR.value)), flush=True)
    return
  own = not _CACHE_DIR.value
  cache_dir = tempfile.mkdtemp(prefix='mlvicx_compile_cache_') if own else _CACHE_DIR.value
  try:
    if os.path.isdir(cache_dir) and os.listdir(cache_dir):
      raise app.UsageError(f'--cache_dir={cache_dir} is not empty: the cold run needs it empty')
    cold = _run_child(cache_dir)
    count, mib = _entries(cache_dir)
    warm = _run_child(cache_dir)
  finally:
    if own:
      shutil.rmtree(cache_dir, ignore_errors=True)
  print(f"\nconfigs/nih.py:{_VARIANT.value or 'official'}, {_IMAGE_SIZE.value} px, batch "
        f"{_BATCH_SIZE.value}, {cold['params']:,} parameters, {cold['device']}, "
        f"{os.cpu_count()} CPUs; cache after the cold run: {count} entries, {mib:.1f} MiB")
  print('| seconds | cold | warm | cold / warm |')
  print('|---|---|---|---|')
  for key, name in (('first_step_s', 'time to first train step'),
                    ('lower_s', '  trace + lower'),
                    ('compile_s', '  compile (warm: cache read)'),
                    ('run_s', '  first step run'),
                    ('second_step_s', 'second train step'),
                    ('init_s', 'init_state (compile + run)'),
                    ('process_s', 'process (imports included)')):
    print(f'| {name} | {cold[key]:.2f} | {warm[key]:.2f} | {cold[key] / warm[key]:.1f}x |')
  if abs(cold['loss'] - warm['loss']) > 1e-5 * max(1.0, abs(cold['loss'])):
    print(f"WARNING: first-step losses differ: cold {cold['loss']}, warm {warm['loss']}")


if __name__ == '__main__':
  app.run(main)
