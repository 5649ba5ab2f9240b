"""What clusters do to long runs, through the public command (issue 11).

Damaged checkpoints, changed configs, two jobs in one workdir, stale locks:
each run is `python -m mlvicx_jax.main --config=configs/nih.py:smoke` in a
subprocess on the session's synthetic NIH build.
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import load_config
from conftest import REPO
from mlvicx_jax import checkpoint
from mlvicx_jax.train import resume
from mlvicx_jax.train import workdir_lock


def command(workdir, data_dir, *overrides):
  return [sys.executable, '-m', 'mlvicx_jax.main', '--config=configs/nih.py:smoke',
          f'--workdir={workdir}', f'--config.data_dir={data_dir}', *overrides]


def run(workdir, data_dir, *overrides):
  return subprocess.run(command(workdir, data_dir, *overrides), cwd=REPO, capture_output=True,
                        text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=600)


def steps(workdir):
  root = os.path.join(workdir, 'checkpoints')
  return sorted(int(d) for d in os.listdir(root) if d.isdigit())


def flat_params(workdir, step):
  variables, _, _ = checkpoint.restore_model(str(workdir), step)
  import jax  # pylint: disable=g-import-not-at-top
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(variables)}


def test_lock_drift_damage_and_stale_lock_on_one_workdir(nih_data_dir, tmp_path):
  """One workdir through what a cluster does to it (few runs: each compiles)."""
  workdir = tmp_path / 'run'
  # 1. A second job started while the first trains exits at once, naming the holder.
  first = subprocess.Popen(command(workdir, nih_data_dir), cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, JAX_PLATFORMS='cpu'))
  lock = workdir / workdir_lock.LOCK_NAME
  deadline = time.time() + 300
  while not lock.exists() and first.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  assert lock.exists(), 'the first job never took the lock'
  second = run(workdir, nih_data_dir)
  _, first_err = first.communicate(timeout=600)
  assert second.returncode == 1
  assert f'pid {first.pid}' in second.stderr and 'in use by another job' in second.stderr
  assert 'Traceback' not in second.stderr
  assert first.returncode == 0, first_err[-3000:]
  assert steps(workdir) == [4, 8] and not lock.exists()
  reference = flat_params(workdir, 8)

  # 2. Another architecture: one message naming the field and both values, no traceback.
  wider = run(workdir, nih_data_dir, '--config.model.width=24')
  assert wider.returncode == 1
  assert 'model.width: 16 in checkpoint, 24 now' in wider.stderr
  assert f'--config.init_from={workdir}' in wider.stderr
  for noise in ('Traceback', 'Event loop is closed'):
    assert noise not in wider.stderr
  # 3. Another batch size: refused unless listed.
  bigger = run(workdir, nih_data_dir, '--config.global_batch_size=8')
  assert bigger.returncode == 1 and 'Traceback' not in bigger.stderr
  assert 'global_batch_size: 16 in checkpoint, 8 now' in bigger.stderr
  assert '--config.allow_resume_changes=global_batch_size' in bigger.stderr
  assert steps(workdir) == [4, 8]  # refused runs touch nothing

  # 4. An interrupted copy (every array file of step 8 cut to 50 bytes) and a
  # lock left by a process of this host that no longer runs.
  damaged = 0
  for folder in ('model', 'train'):
    for root, _, files in os.walk(workdir / 'checkpoints' / '8' / folder):
      for name in files:
        path = os.path.join(root, name)
        if os.path.getsize(path) > 200 and not name.endswith('.json'):
          with open(path, 'r+b') as f:
            f.truncate(50)
          damaged += 1
  assert damaged
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  lock.write_text(json.dumps({'host': socket.gethostname(), 'pid': dead.pid,
                              'started': 'yesterday'}))
  again = run(workdir, nih_data_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'checkpoint step 8' in again.stderr and 'cannot be restored' in again.stderr
  assert 'Resumed from step 4' in again.stderr and 'Took over the stale lock' in again.stderr
  aside = [d for d in os.listdir(workdir / 'checkpoints') if d.startswith('8.corrupt-')]
  assert len(aside) == 1 and steps(workdir) == [4, 8]
  retrained = flat_params(workdir, 8)  # the lost steps retrained: bitwise the same
  assert retrained.keys() == reference.keys()
  for key in reference:
    np.testing.assert_array_equal(retrained[key], reference[key], err_msg=key)
  assert not lock.exists()
  assert [f for f in os.listdir(workdir) if f.startswith(workdir_lock.LOCK_NAME + '.stale-')]

  # 5. The batch size change, allowed: resumes and says so.
  allowed = run(workdir, nih_data_dir, '--config.num_train_steps=10',
                '--config.global_batch_size=8', '--config.allow_resume_changes=global_batch_size')
  assert allowed.returncode == 0, allowed.stderr[-3000:]
  assert 'global_batch_size changed: 16 in checkpoint, 8 now (allowed)' in allowed.stderr
  assert steps(workdir) == [4, 8, 10]


def _config(**overrides):
  config = load_config('configs/nih.py', 'smoke')
  config.update(overrides)
  return config


def test_drift_categories():
  saved = json.loads(_config().to_json_best_effort())
  # Run length, cadence, workers and the data's location may change freely.
  assert resume.check_config_drift(saved, _config(num_train_steps=99, worker_count=3,
                                                  log_every_steps=7, data_dir='/elsewhere'),
                                   'W', 4) == []
  config = _config()
  config.loss.lam = 0.5
  config.image_size = 128
  with pytest.raises(resume.ConfigDriftError) as error:
    resume.check_config_drift(saved, config, 'W', 4)
  assert 'loss.lam: 1.0 in checkpoint, 0.5 now' in str(error.value)
  assert 'image_size: 96 in checkpoint, 128 now' in str(error.value)
  config = _config(seed=3)
  config.optim.base_lr = 0.5
  with pytest.raises(resume.ConfigDriftError, match='allow_resume_changes=optim.base_lr,seed'):
    resume.check_config_drift(saved, config, 'W', 4)
  config.allow_resume_changes = 'optim,seed'  # a group name covers its fields
  assert [d[0] for d in resume.check_config_drift(saved, config, 'W', 4)] == [
      'optim.base_lr', 'seed']
  config = _config()
  config.model.dtype = 'bfloat16'  # same parameters: allowed when listed
  with pytest.raises(resume.ConfigDriftError, match='allow_resume_changes=model.dtype'):
    resume.check_config_drift(saved, config, 'W', 4)


def test_runs_written_before_newer_fields_still_resume():
  """A saved config without the later model fields, `method` or with aug.on='host' (older
  runs) matches today's defaults on CPU; a real change of those fields is still refused."""
  saved = json.loads(_config().to_json_best_effort())
  for field in ('head_hidden_norm', 'head_output_norm', 'head_output_bias', 'predictor',
                'predictor_output_norm'):
    del saved['model'][field]
  del saved['method']
  saved['aug']['on'] = 'host'
  assert resume.check_config_drift(saved, _config(), 'W', 4) == []
  config = _config(method='simclr')
  config.model.head_output_norm = 'none'
  with pytest.raises(resume.ConfigDriftError) as error:
    resume.check_config_drift(saved, config, 'W', 4)
  assert 'method: "mlvicx" in checkpoint, "simclr" now' in str(error.value)
  assert 'model.head_output_norm: "affine" in checkpoint, "none" now' in str(error.value)


def test_lock_of_another_host_is_not_taken_and_object_stores_get_none(tmp_path, caplog):
  (tmp_path / workdir_lock.LOCK_NAME).write_text(json.dumps(
      {'host': 'node-17', 'pid': 4242, 'started': '2026-11-20T03:00:00'}))
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match='host node-17, pid 4242, started 2026-11-20T03:00:00'):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())['host'] == 'node-17'
  with workdir_lock.WorkdirLock(str(tmp_path / 'fresh')) as lock:
    holder = json.loads((tmp_path / 'fresh' / workdir_lock.LOCK_NAME).read_text())
    assert (holder['host'], holder['pid']) == (socket.gethostname(), os.getpid())
    with pytest.raises(workdir_lock.WorkdirLockedError, match='in use by another job'):
      workdir_lock.WorkdirLock(lock.workdir).acquire()  # alive: this very process
  assert not (tmp_path / 'fresh' / workdir_lock.LOCK_NAME).exists()
  with caplog.at_level('WARNING'):
    workdir_lock.WorkdirLock('gs://bucket/run').acquire()
  assert 'no workdir lock' in caplog.text


def test_nih_config_is_readable_alone():
  """configs/nih.py holds the model and augmentation values (the code reads them from
  there, config_files), so it imports nothing but ml_collections."""
  with open(os.path.join(REPO, 'configs', 'nih.py')) as f:
    imports = [line for line in f if line.startswith(('import ', 'from '))]
  assert imports == ['import ml_collections\n']
