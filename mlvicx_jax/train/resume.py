"""Resuming a workdir safely: config drift, and checkpoints that do not restore.

Config drift. The run config saved in every checkpoint's meta is compared
with the new one before anything is compiled:
  - fields that define the network, the loss or the data (`model.*`,
    `loss.*`, `dataset`, `split`, `image_size`, the synthetic data) stop the
    run, naming each difference with both values;
  - fields that may change on resume (run length, logging and checkpoint
    cadence, worker count, where the data lives) pass;
  - everything else (batch size, learning rate and the optimiser, seed,
    augmentation, compute dtype) passes only when listed in
    `--config.allow_resume_changes=global_batch_size,optim.base_lr`
    (a group name such as `optim` covers its fields), and is logged.

Fallback. A checkpoint whose meta or state cannot be read (missing or
truncated files, an interrupted copy) is moved aside to
`checkpoints/<step>.corrupt-<time>` (never deleted) with a warning naming
it and the error, and the next older one is tried. With several processes,
a step counts as restored only when every process restored it, and only
process 0 moves folders, so all agree on the step.
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Any, Callable, Optional

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from mlvicx_jax import checkpoint
from mlvicx_jax.data import augment
from mlvicx_jax.data import mixture

FREE_FIELDS = ('num_epochs', 'num_train_steps', 'log_every_steps', 'checkpoint_every_steps',
               'keep_last_checkpoints', 'keep_every_steps', 'async_checkpointing',
               'worker_count', 'inject_nan_at_step', 'data_dir', 'init_from',
               'allow_resume_changes', 'compilation_cache_dir',
               'monitor', 'on_bad_record', 'nonfinite', 'nonfinite_skip_batches',
               'nonfinite_lr_scale', 'nonfinite_lr_steps', 'nonfinite_max_rollbacks',
               'inject_nan_every_try')
FIXED_FIELDS = ('method', 'model', 'loss', 'dataset', 'split', 'image_size', 'synthetic_images',
                'synthetic_image_size')
# Inside model.*: same parameters and function, so they may change when allowed.
ALLOWABLE_MODEL_FIELDS = ('model.dtype', 'model.multilevel_impl', 'model.remat')


class ConfigDriftError(ValueError):
  """The new config contradicts the checkpoint it would resume."""


class RestoreError(RuntimeError):
  """No checkpoint of the workdir could be restored."""


def flatten(tree: Any, prefix: str = '') -> dict:
  """{'a.b': value} of a nested dict, sequences as lists (JSON's view)."""
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(flatten(value, f'{prefix}{key}.'))
    return out
  return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def _covered(field: str, names) -> bool:
  return any(field == n or field.startswith(n + '.') for n in names)


def _fmt(value) -> str:
  return json.dumps(value)


def _comparable(run_config: dict) -> dict:
  """Flattened, with the meaning of fields that older runs did not write.

  A model field added later held its default then (model_config_from_json
  fills it), a run without `method` was MLVICX, and aug.on is compared by
  where it puts the views on this machine ('auto' is 'host' on CPU).
  """
  run_config = dict(run_config)
  if 'model' in run_config:
    run_config['model'] = checkpoint.config_to_json(
        checkpoint.model_config_from_json(run_config['model']))
  run_config.setdefault('method', 'mlvicx')
  try:  # the same mixture written differently ('nih:1, chexpert:2') is the same stream
    run_config['dataset'] = mixture.canonical(run_config['dataset'])
  except (KeyError, ValueError):
    pass
  if isinstance(run_config.get('aug'), dict):
    run_config['aug'] = dict(run_config['aug'], on=augment.placement(run_config['aug']))
  return flatten(run_config)


def check_config_drift(saved: Optional[dict], config, workdir: str, step: int) -> list:
  """Raises ConfigDriftError unless the differences may change on resume.

  Returns the allowed differences (field, saved, now), which the caller logs.
  """
  if saved is None:
    logging.warning('the checkpoint at step %d has no run config in its meta; '
                    'config drift is not checked', step)
    return []
  now = _comparable(json.loads(config.to_json_best_effort()))
  before = _comparable(saved)
  missing = object()
  diffs = [(f, before.get(f, missing), now.get(f, missing))
           for f in sorted(set(now) | set(before))
           if before.get(f, missing) != now.get(f, missing) and not _covered(f, FREE_FIELDS)]
  show = lambda v: 'absent' if v is missing else _fmt(v)
  lines = lambda items: '\n'.join(f'  {f}: {show(a)} in checkpoint, {show(b)} now'
                                  for f, a, b in items)
  fixed = [d for d in diffs if _covered(d[0], FIXED_FIELDS)
           and not _covered(d[0], ALLOWABLE_MODEL_FIELDS)]
  if fixed:
    raise ConfigDriftError(
        f'{workdir} holds a run of another network, loss or data (checkpoint step {step}):\n'
        f'{lines(fixed)}\nStart a new run in another --workdir, or start one from these '
        f'weights with --config.init_from={workdir}.')
  allowed = [a.strip() for a in str(config.get('allow_resume_changes', '')).split(',')
             if a.strip()]
  refused = [d for d in diffs if not _covered(d[0], allowed)]
  if refused:
    names = ','.join(f for f, _, _ in refused)
    raise ConfigDriftError(
        f'resuming {workdir} (checkpoint step {step}) with changed settings:\n'
        f'{lines(refused)}\nThe schedule, epoch count and input position would change '
        f'meaning. To resume anyway pass --config.allow_resume_changes={names}; or use '
        f'another --workdir.')
  for field, a, b in diffs:
    logging.warning('resuming with %s changed: %s in checkpoint, %s now (allowed)', field,
                    show(a), show(b))
  return diffs


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  return mngr.restore(step, args=ocp.args.Composite(**{
      checkpoint.META: ocp.args.JsonRestore()}))[checkpoint.META]


def all_processes(ok: bool) -> bool:
  """Whether `ok` holds on every process (a collective: all must call it)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _move_aside(root: str, step: int) -> str:
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  aside = os.path.join(root, f'{step}.corrupt-{stamp}')
  if jax.process_index() == 0:
    os.replace(os.path.join(root, str(step)), aside)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f'checkpoint {step} moved aside')
  return aside


def restore_latest(open_manager: Callable[[], ocp.CheckpointManager],
                   restore: Callable[[ocp.CheckpointManager, int], Any],
                   check_meta: Callable[[dict, int], None], workdir: str):
  """(manager, restored state or None, step or None): the newest checkpoint that restores.

  `check_meta(meta, step)` runs before the state is read (config drift: its
  errors propagate, they are not damage). Damaged steps are moved aside.
  """
  mngr = open_manager()
  try:
    return _restore_latest(mngr, open_manager, restore, check_meta, workdir)
  except BaseException:
    mngr.close()  # an open async manager left to the interpreter's exit spews tracebacks
    raise


def _restore_latest(mngr, open_manager, restore, check_meta, workdir):
  tried = []
  while True:
    step = mngr.latest_step()
    if step is None:
      if tried:
        raise RestoreError(f'no checkpoint of {workdir} could be restored; tried (newest '
                           'first, each moved aside):\n' + '\n'.join(tried))
      return mngr, None, None
    error, stage, meta = None, 'meta', None
    try:
      meta = read_meta(mngr, step)
    except Exception as e:  # pylint: disable=broad-except  (any damage looks different)
      error = e
    if all_processes(error is None):
      check_meta(meta, step)
      stage = 'state'
      try:
        state = restore(mngr, step)
      except Exception as e:  # pylint: disable=broad-except
        error = e
      if all_processes(error is None):
        return mngr, state, step
    message = str(error).splitlines()[0][:300] if error else 'failed on another process'
    root = str(mngr.directory)
    mngr.close()
    aside = _move_aside(root, step)
    logging.warning('checkpoint step %d of %s cannot be restored (%s: %s); moved it to %s and '
                    'trying the previous one', step, workdir, stage, message, aside)
    tried.append(f'  step {step} ({stage}): {message} -> {aside}')
    mngr = open_manager()
