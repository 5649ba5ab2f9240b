"""The pretraining program end to end: smoke run, resume, preemption, NaN guard, multi-host."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO
from conftest import load_config
from mlvicx_jax import pretrained
from mlvicx_jax.train import config_check


@pytest.fixture(scope='module')
def data_dir(nih_data_dir):
  """The session's synthetic NIH build (conftest)."""
  return nih_data_dir


def main_cmd(workdir, *overrides, config='configs/nih.py'):
  return [sys.executable, '-m', 'mlvicx_jax.main', f'--config={config}:smoke',
          f'--workdir={workdir}', *overrides]


def run_main(workdir, *overrides, env=None, check=True, config='configs/nih.py'):
  out = subprocess.run(main_cmd(workdir, *overrides, config=config), cwd=REPO,
                       capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS='cpu', **(env or {})), check=False)
  if check:
    assert out.returncode == 0, out.stderr[-4000:]
  return out


def metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def checkpoint_steps(workdir):
  root = os.path.join(workdir, 'checkpoints')
  return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_smoke_config_runs_with_nothing_else(tmp_path):
  """`--config=configs/nih.py:smoke --workdir=W` makes its data, trains, checkpoints."""
  workdir = str(tmp_path / 'smoke')
  run_main(workdir)
  losses = [m['loss'] for m in metrics(workdir)]
  assert len(losses) == 8 and all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
  for key in ('global/inv', 'global/var', 'global/cov', 'local/inv', 'local/var', 'local/cov',
              'global/std', 'lr', 'pairs_per_second'):
    assert key in metrics(workdir)[-1]
  assert checkpoint_steps(workdir) == [4, 8]
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  loaded = pretrained.load(workdir)
  assert loaded.step == 8
  out = loaded.embed(np.zeros((2, 96, 96, 3), np.float32))
  assert out['features'].shape == (2, 128) and out['z'].shape == (2, 128) and out['m'].shape == (2, 128)


def _run_until(workdir, overrides, predicate, sig, config='configs/nih.py'):
  """Starts a run, waits until predicate(workdir) holds, sends `sig`, returns the exit code."""
  proc = subprocess.Popen(main_cmd(workdir, *overrides, config=config), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  deadline = time.time() + 300
  while not predicate(workdir):
    assert proc.poll() is None, f'run ended before the signal: {proc.stderr.read()[-3000:]}'
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=300)
  return proc.returncode, err


def _train_item(workdir, step):
  """The checkpoint's optimiser state, step and the method's extra state, as saved."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'train')
  with ocp.StandardCheckpointer() as checkpointer:
    return flat(checkpointer.restore(path))


@pytest.mark.parametrize('config, aug_on', [  # each placement once with and without extra state
    ('configs/nih.py', 'device'), ('configs/pretrain/byol.py', 'device'),
    ('configs/pretrain/moco_v2.py', 'host')])
def test_kill_and_sigterm_then_resume_is_bitwise_identical(data_dir, tmp_path, config, aug_on):
  """Views made in the step (keyed by stream position) or by grain workers alike;
  BYOL's and MoCo's momentum targets and MoCo's queue come back exactly too."""
  steps = ['--config.num_train_steps=24', '--config.checkpoint_every_steps=4',
           f'--config.data_dir={data_dir}', '--config.log_every_steps=1',
           f'--config.aug.on={aug_on}']
  reference = str(tmp_path / 'reference')
  run_main(reference, *steps, config=config)

  interrupted = str(tmp_path / 'interrupted')
  # kill -9 once a checkpoint exists and training has gone past it.
  code, _ = _run_until(interrupted, steps, lambda w: checkpoint_steps(w) and
                       os.path.exists(os.path.join(w, 'metrics.jsonl')) and
                       len(metrics(w)) > checkpoint_steps(w)[-1] + 1, signal.SIGKILL, config)
  assert code == -signal.SIGKILL
  killed_at = checkpoint_steps(interrupted)[-1]
  assert killed_at < 24
  # Resume, then SIGTERM (preemption) mid-run: a loadable checkpoint at that step, exit 0.
  code, err = _run_until(interrupted, steps, lambda w: len(metrics(w)) > killed_at + 10 + 2,
                         signal.SIGTERM, config)
  assert code == 0, err[-3000:]
  preempted_at = checkpoint_steps(interrupted)[-1]
  assert killed_at < preempted_at < 24
  assert pretrained.load(interrupted).step == preempted_at
  # Resume to the end: the same parameters, bit for bit, as the uninterrupted run.
  run_main(interrupted, *steps, config=config)
  a, b = pretrained.load(reference), pretrained.load(interrupted)
  assert a.step == b.step == 24
  for fa, fb in ((flat(a.variables), flat(b.variables)),
                 (_train_item(reference, 24), _train_item(interrupted, 24))):
    assert fa.keys() == fb.keys()
    for key in fa:
      np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)
  if 'moco' in config or 'byol' in config:
    assert any('extra' in key and 'target' in key for key in fa)


def test_non_finite_loss_stops_before_checkpointing(data_dir, tmp_path):
  workdir = str(tmp_path / 'nan')
  out = run_main(workdir, f'--config.data_dir={data_dir}', '--config.num_train_steps=8',
                 '--config.checkpoint_every_steps=2', '--config.inject_nan_at_step=5', check=False)
  assert out.returncode != 0
  assert 'non-finite loss at step 5: global/inv' in out.stderr
  assert checkpoint_steps(workdir) == [2, 4]
  loaded = pretrained.load(workdir)
  assert loaded.step == 4
  assert all(np.isfinite(v).all() for v in jax.tree.leaves(loaded.variables))


def test_bad_config_fails_before_compiling(tmp_path):
  out = run_main(str(tmp_path / 'bad'), '--config.global_batch_size=15', check=False,
                 env={'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})
  assert out.returncode != 0 and 'config.global_batch_size' in out.stderr
  out = run_main(str(tmp_path / 'bad'), '--config.optim.base_lr=-1', check=False)
  assert out.returncode != 0 and 'config.optim.base_lr' in out.stderr
  out = run_main(str(tmp_path / 'bad'), '--config.dataset=mnist', check=False)
  assert out.returncode != 0 and 'config.dataset' in out.stderr
  out = run_main(str(tmp_path / 'bad'), '--config.optim.base_rl=0.1', check=False)
  assert out.returncode != 0 and 'base_rl' in out.stderr


@pytest.mark.parametrize('field, value, on, named', [
    ('on', 'gpu', 'gpu', 'config.aug.on'),
    ('interpolation', 'nearest', 'device', 'config.aug.view1.interpolation')])
def test_augmentation_placement_is_checked(field, value, on, named):
  """An unknown placement, or a resampling the device path lacks, is named."""
  config = load_config('configs/nih.py', 'smoke')
  config.aug.on = on
  if field == 'interpolation':
    config.aug.view1.interpolation = value
  with pytest.raises(config_check.ConfigError, match=named.replace('.', r'\.')):
    config_check.validate(config)
  config.aug.on = 'host'  # Any PIL resampling is fine on the host.
  config_check.validate(config)


def test_a_config_of_another_program_is_named_not_crashed_on():
  """configs/demo.py holds a pretraining config inside it; main names the mix-up."""
  with pytest.raises(config_check.ConfigError, match=r'not a pretraining config.*mlvicx_jax\.demo'):
    config_check.validate(load_config('configs/demo.py'))
  config_check.validate(load_config('configs/demo.py').pretrain)


def test_two_processes_match_one_process(mixture_data_dir, tmp_path):
  """2 processes x 2 CPU devices (gloo) == 1 process x 4 devices, same global batches,
  also after both fell back from a damaged checkpoint; on a 1:3 mixture of two
  builds, whose stream is the one that has to stay process-count independent.
  A NaN at stream position 1 (before any checkpoint) makes every process take
  the same rollback to the initial state, and the resumed run reads it back.

  The plain trunk is used: with context blocks, max-op ties make some
  gradients change under any float reordering (see test_sharding.py).
  """
  flags = [f'--config.data_dir={mixture_data_dir}', '--config.dataset=nih:1,folder:3',
           '--config.num_train_steps=3',
           '--config.checkpoint_every_steps=2', '--config.model.context_blocks=False',
           '--config.nonfinite=rollback', '--config.inject_nan_at_step=1']
  rollback = 'rollback 1 of 3: step 1 (global/inv): back to step 0, skipped 2 batches'
  multi = str(tmp_path / 'multi')
  launch = ['bash', 'launch/local_cpu.sh', multi, '--config=configs/nih.py:smoke', *flags]
  out = subprocess.run(launch, cwd=REPO, capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  assert checkpoint_steps(multi) == [2, 3]
  for i in (0, 1):
    with open(os.path.join(multi, f'process_{i}.log')) as f:
      assert rollback in f.read()
  # The last checkpoint damaged (its array files cut short): both processes
  # agree to fall back to step 2 and retrain step 3.
  for root, _, files in os.walk(os.path.join(multi, 'checkpoints', '3', 'model')):
    for name in files:
      if os.path.getsize(os.path.join(root, name)) > 200 and not name.endswith('.json'):
        with open(os.path.join(root, name), 'r+b') as f:
          f.truncate(50)
  out = subprocess.run(launch, cwd=REPO, capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  for i in (0, 1):
    with open(os.path.join(multi, f'process_{i}.log')) as f:
      log = f.read()
    assert 'cannot be restored' in log and 'Resumed from step 2' in log, log[-3000:]
    assert rollback not in log  # read back from the checkpoint, not taken again
  assert checkpoint_steps(multi) == [2, 3]
  assert len([d for d in os.listdir(os.path.join(multi, 'checkpoints')) if '.corrupt-' in d]) == 1
  single = str(tmp_path / 'single')
  run_main(single, *flags, env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  last = lambda w: {m['step']: m['loss'] for m in metrics(w) if 'event' not in m}
  assert [m['event'] for m in metrics(single) if 'event' in m] == ['nonfinite_rollback']
  by_multi, by_single = last(multi), last(single)  # rolled-back steps were logged twice
  lm, ls = [by_multi[k] for k in sorted(by_multi)], [by_single[k] for k in sorted(by_single)]
  assert len(lm) == len(ls) == 3
  np.testing.assert_allclose(lm, ls, rtol=1e-5)
  # Whole-tree relative differences: biases feeding a BatchNorm have an exactly
  # zero true gradient, so their own tiny values are float noise.
  a, b = pretrained.load(multi).variables, pretrained.load(single).variables
  for collection, tol in (('params', 1e-4), ('batch_stats', 1e-5)):
    x, y = jax.tree.leaves(a[collection]), jax.tree.leaves(b[collection])
    diff = np.sqrt(sum(np.sum((u - v)**2) for u, v in zip(x, y)))
    assert diff / np.sqrt(sum(np.sum(v**2) for v in y)) < tol, collection
