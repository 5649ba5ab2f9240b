"""A full disk during pretraining (issue 20): one message, intact older steps, resume.

The failure is injected at the writer in a shim around the public command:
the third save's `meta` write raises ENOSPC, as a full filesystem would.
"""
import errno
import os
import subprocess
import sys

import helpers
from conftest import REPO
from mlvicx_jax import storage
from mlvicx_jax import pretrained


def run(workdir, data_dir, fault):
  args = ['--config=configs/nih.py:smoke', f'--workdir={workdir}',
          f'--config.data_dir={data_dir}', '--config.num_train_steps=6',
          '--config.checkpoint_every_steps=2']
  head = (helpers.enospc_command('mlvicx_jax.main', 3) if fault else
          [sys.executable, '-m', 'mlvicx_jax.main'])
  return subprocess.run(head + args, cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=600)


def test_full_disk_stops_with_one_line_and_resumes(nih_data_dir, tmp_path):
  workdir = tmp_path / 'run'
  failed = run(workdir, nih_data_dir, fault=True)
  output = failed.stdout + failed.stderr
  assert failed.returncode == 1, output[-3000:]
  errors = [l for l in failed.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, output[-3000:]
  assert 'step 6' in errors[0] and 'No space left on device' in errors[0], errors[0]
  assert 'steps 2, 4' in errors[0] and 're-run the same command' in errors[0], errors[0]
  assert 'Traceback' not in output and 'Event loop is closed' not in output, output[-3000:]
  root = workdir / 'checkpoints'
  assert storage.intact_steps(str(root)) == [2, 4], os.listdir(root)
  loaded = pretrained.load(str(workdir))
  assert loaded.step == 4 and loaded.meta['step'] == 4
  pretrained.load(str(workdir), step=2)

  resumed = run(workdir, nih_data_dir, fault=False)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resumed from step 4' in resumed.stderr
  assert storage.intact_steps(str(root))[-1] == 6
  assert not [d for d in os.listdir(root) if 'orbax-checkpoint-tmp' in d], os.listdir(root)


def test_free_space_warning(tmp_path, monkeypatch):
  class Usage:
    free = 3 * 2**20
  monkeypatch.setattr(storage.shutil, 'disk_usage', lambda path: Usage)
  warning = storage.free_space_warning(str(tmp_path), 4 * 2**20)
  assert '3.0 MB free' in warning and '4.0 MB' in warning
  assert storage.free_space_warning(str(tmp_path), 2 * 2**20) is None  # 3 >= 1.5 x 2
  assert storage.free_space_warning(str(tmp_path), 0) is None  # nothing saved yet


def test_save_failure_cause_reads_orbax_and_tensorstore_errors():
  assert storage.save_failure_cause(OSError(errno.ENOSPC, 'x')) == 'x'
  tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing local file "a": Failed to write '
                           "16902 bytes to file 11: No space left on device [os_error_code='28']")
  assert storage.save_failure_cause(tensorstore) == 'No space left on device'
  assert storage.save_failure_cause(ValueError('shape mismatch')) is None
