"""A full disk during evaluation (issue 20): one line, finished runs intact, re-run resumes.

The classifier save is failed at Orbax's writer (ENOSPC in a shim around the
public command); a record write is failed at numpy's, in process.
"""
import errno
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import helpers
from conftest import REPO
from mlvicx_jax import storage
from mlvicx_jax.evaluate import classification
from mlvicx_jax.evaluate import record_files


def _evaluate(workdir, data_dir, fault):
  args = ['--config=configs/eval/nih.py:smoke', f'--workdir={workdir}',
          f'--config.data_dir={data_dir}', '--config.protocol=frozen', '--config.seeds=(0,1)']
  head = (helpers.enospc_command('mlvicx_jax.evaluate', 2) if fault else
          [sys.executable, '-m', 'mlvicx_jax.evaluate'])
  return subprocess.run(head + args, cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=600)


def _records(workdir):
  return sorted(glob.glob(os.path.join(workdir, 'run_record_*.json')))


def test_a_failed_classifier_save_is_one_line_and_the_rerun_completes(nih_data_dir, tmp_path):
  workdir = str(tmp_path / 'eval')
  out = _evaluate(workdir, nih_data_dir, fault=True)
  output = out.stdout + out.stderr
  assert out.returncode == 1, output[-3000:]
  errors = [line for line in output.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, output[-3000:]
  assert 'classifiers' in errors[0] and 'seed1' in errors[0]
  assert 'No space left on device' in errors[0]
  assert 'Traceback' not in output and 'Event loop is closed' not in output
  (first,) = _records(workdir)  # seed 0 finished before the disk filled
  assert first.endswith('_seed0.json')
  with open(first) as f:
    finished = f.read()
  assert not glob.glob(os.path.join(workdir, '*.tmp*'))

  out = _evaluate(workdir, nih_data_dir, fault=False)
  assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
  assert [os.path.basename(p)[-10:] for p in _records(workdir)] == ['seed0.json', 'seed1.json']
  with open(first) as f:
    assert f.read() == finished  # skipped, not redone
  redone = record_files.load_run_records(workdir)[1]
  assert redone['seed'] == 1 and classification.restore_classifier(redone['model'])


def test_a_failed_record_write_removes_its_partial_file(tmp_path, monkeypatch):
  record = json.loads(json.dumps({
      'task': 'nih', 'protocol': 'frozen', 'label_fraction': 1.0, 'seed': 0,
      'checkpoint': 'random', 'metric_name': 'mean_auc', 'test': {'mean_auc': 0.5}}))
  predictions = {'labels': np.zeros((4, 2)), 'scores': np.full((4, 2), 0.5)}

  def full_disk(path, **arrays):
    with open(path, 'wb') as f:
      f.write(b'PK\x03\x04 partial')
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(record_files.np, 'savez_compressed', full_disk)
  with pytest.raises(storage.SaveError) as e:
    record_files.write_run_record(str(tmp_path), record, predictions)
  message = str(e.value)
  assert '\n' not in message and 'No space left on device' in message
  assert 'run_record_nih_frozen_f1_seed0_predictions.npz' in message and 're-run the same command' in message
  assert os.listdir(tmp_path) == []  # neither the partial npz nor a record without it
