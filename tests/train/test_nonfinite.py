"""A non-finite loss under config.nonfinite='rollback': back to the last checkpoint,
past the bad window, on to the end; the same after a kill; a budget that ends it."""
import json
import os
import signal

import jax
import ml_collections
import numpy as np
import pytest

from conftest import load_config
from mlvicx_jax import pretrained
from mlvicx_jax.train import config_check
from mlvicx_jax.train import nonfinite
from train.test_loop import _run_until, _train_item, checkpoint_steps, flat, metrics, run_main

STEPS = 14
FLAGS = [f'--config.num_train_steps={STEPS}', '--config.checkpoint_every_steps=2',
         '--config.log_every_steps=1', '--config.nonfinite=rollback',
         '--config.inject_nan_at_step=5', '--config.nonfinite_lr_scale=0.5',
         '--config.nonfinite_lr_steps=3']


def _config(**fields):
  c = ml_collections.ConfigDict(dict(nonfinite='rollback', nonfinite_skip_batches=0,
                                     nonfinite_lr_scale=1.0, nonfinite_lr_steps=0,
                                     nonfinite_max_rollbacks=3, inject_nan_at_step=-1,
                                     inject_nan_every_try=False))
  c.update(fields)
  return c


def test_decisions_in_closed_form():
  failure = nonfinite.NonFiniteStep(9, 'local/cov', float('nan'))
  first = nonfinite.decide(_config(nonfinite_lr_scale=0.25, nonfinite_lr_steps=5), failure,
                           [], 6, [])
  assert (first.restored_step, first.skipped_batches, first.stream_offset) == (6, 9 - 6 + 1, 4)
  assert [nonfinite.lr_scale(s, [first]) for s in (5, 6, 10, 11)] == [1.0, 0.25, 0.25, 1.0]
  # Back to a checkpoint that recorded `first`: its offset plus the new skip.
  again = nonfinite.decide(_config(nonfinite_skip_batches=7), failure, [first], 8, [first])
  assert (again.skipped_batches, again.stream_offset) == (7, 4 + 7)
  # Back to one saved before `first`: the stream offset restarts from that checkpoint's.
  older = nonfinite.decide(_config(), failure, [first], 6, [])
  assert older.stream_offset == older.skipped_batches == 4
  assert nonfinite.from_meta(json.loads(json.dumps(nonfinite.to_meta([first, again])))) == [
      first, again]
  assert nonfinite.from_meta({'config': {}}) == []
  with pytest.raises(nonfinite.NonFiniteLossError, match='--config.nonfinite=rollback'):
    nonfinite.decide(_config(nonfinite='stop'), failure, [], 6, [])
  with pytest.raises(nonfinite.NonFiniteLossError, match=r'budget is spent .*= 2\).*'
                     r'step 9 \(local/cov\): back to step 6, skipped 4 batches.*skipped 7'):
    nonfinite.decide(_config(nonfinite_max_rollbacks=2), failure, [first, again], 8, [again])


def test_poison_follows_the_stream_or_the_step():
  at_position = _config(inject_nan_at_step=5)
  assert np.isnan(nonfinite.poison(at_position, 3, 5, 4)).all()
  assert (nonfinite.poison(at_position, 5, 7, 4) == 1).all()
  every_try = _config(inject_nan_at_step=5, inject_nan_every_try=True)
  assert np.isnan(nonfinite.poison(every_try, 5, 7, 2)).all()


def _events(workdir):
  return [m for m in metrics(workdir) if 'event' in m]


def _last_logged(workdir):
  """step -> the last row logged for it (a rolled-back step is logged again)."""
  return {m['step']: m for m in metrics(workdir) if 'event' not in m}


def test_rollback_reaches_the_end_and_a_kill_after_it_resumes_bitwise(nih_data_dir, tmp_path):
  flags = [f'--config.data_dir={nih_data_dir}', *FLAGS]
  reference = str(tmp_path / 'reference')
  out = run_main(reference, *flags)
  assert 'non-finite loss, rollback 1 of 3: step 5 (global/inv): back to step 4, skipped 2 ' \
         'batches, learning rate x0.5 until step 7' in out.stderr
  assert 'Traceback' not in out.stderr
  (event,) = _events(reference)
  assert (event['step'], event['event'], event['restored_step'], event['skipped_batches']) == (
      5, 'nonfinite_rollback', 4, 2)
  assert os.listdir(os.path.join(reference, 'tensorboard'))
  loaded = pretrained.load(reference)
  assert loaded.step == STEPS
  assert all(np.isfinite(v).all() for v in jax.tree.leaves(loaded.variables))
  rows = metrics(reference)
  before = {m['step']: m for m in rows[:rows.index(event)]}
  after = _last_logged(reference)
  assert sorted(before) == [0, 1, 2, 3, 4] and sorted(after) == list(range(STEPS))
  for step in (4, 5, 6):  # the scaled window; its first step was logged before the rollback too
    if step in before:
      np.testing.assert_allclose(after[step]['lr'], 0.5 * before[step]['lr'], rtol=1e-6)
  assert all(np.isfinite(m['loss']) for m in after.values())

  # Killed once the first checkpoint after the rollback (step 6, inside the
  # scaled window) is written; resumed, it must repeat the same decisions.
  interrupted = str(tmp_path / 'interrupted')
  code, err = _run_until(interrupted, flags, lambda w: 6 in checkpoint_steps(w), signal.SIGKILL)
  assert code == -signal.SIGKILL, err[-2000:]
  out = run_main(interrupted, *flags)
  assert 'Resumed from step 6' in out.stderr and 'non-finite' not in out.stderr
  assert len(_events(interrupted)) == 1
  a, b = pretrained.load(reference), pretrained.load(interrupted)
  assert a.step == b.step == STEPS
  for fa, fb in ((flat(a.variables), flat(b.variables)),
                 (_train_item(reference, STEPS), _train_item(interrupted, STEPS))):
    assert fa.keys() == fb.keys()
    for key in fa:
      np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


def test_a_spent_budget_ends_the_run_with_one_line(nih_data_dir, tmp_path):
  workdir = str(tmp_path / 'every_try')
  out = run_main(workdir, f'--config.data_dir={nih_data_dir}', *FLAGS,
                 '--config.inject_nan_every_try=True', '--config.nonfinite_max_rollbacks=2',
                 check=False)
  assert out.returncode == 1
  errors = [line for line in out.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, out.stderr[-3000:]
  assert 'non-finite loss at step 5: global/inv' in errors[0]
  assert 'budget is spent (config.nonfinite_max_rollbacks = 2)' in errors[0]
  assert errors[0].count('back to step 4, skipped 2 batches') == 2
  assert 'Traceback' not in out.stderr
  assert len(_events(workdir)) == 2
  assert checkpoint_steps(workdir) == [2, 4]
  assert pretrained.load(workdir).step == 4


@pytest.mark.parametrize('field, value', [('nonfinite', 'retry'), ('nonfinite_lr_scale', 0.0),
                                          ('nonfinite_lr_scale', 2.0),
                                          ('nonfinite_max_rollbacks', -1),
                                          ('nonfinite_skip_batches', -2)])
def test_bad_policy_fields_are_named(field, value):
  config = load_config('configs/nih.py', 'smoke')
  config[field] = value
  with pytest.raises(config_check.ConfigError, match=f'config.{field}'):
    config_check.validate(config)
