"""The one on-disk layout shared by pretraining, import_torch and evaluation.

A checkpoint directory is an Orbax CheckpointManager root whose steps hold:
  model:     {'params': ..., 'batch_stats': ...} of the network in `meta`
  meta:      JSON: {'model_config': {...}, 'source': str, ...}
  train:     optimiser state, step and RNG (pretraining only)
  data_iter: the input iterator's state (pretraining only)
Readers only need `model` and `meta`, so an imported PyTorch checkpoint
(step 0, no train state) and a pretraining workdir load the same way.
"""
import os
import sys
import re
import shutil
from typing import Any, Optional

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

MODEL, META, TRAIN, DATA_ITER = 'model', 'meta', 'train', 'data_iter'
CHECKPOINT_SUBDIR = 'checkpoints'


class CheckpointError(ValueError):
  """A checkpoint is missing, unreadable or of another architecture."""


class SaveError(RuntimeError):
  """A checkpoint could not be written (full disk, I/O error); older ones are intact."""


FREE_SPACE_MARGIN = 1.5
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def _causes(e: BaseException):
  while e is not None:
    yield e
    e = e.__cause__ or e.__context__


def save_failure_cause(e: BaseException) -> Optional[str]:
  """'No space left on device' etc. when `e` is a storage failure, else None.

  Orbax raises OSError for Python-level writes, and tensorstore's status as a
  ValueError ('RESOURCE_EXHAUSTED: ... [os_error_code='28']') for array writes.
  """
  for cause in _causes(e):
    if isinstance(cause, OSError):
      return cause.strerror or (os.strerror(cause.errno) if cause.errno else str(cause))
    match = _OS_ERROR_CODE.search(str(cause))
    if match:
      return os.strerror(int(match.group(1)))
    if str(cause).startswith('RESOURCE_EXHAUSTED'):
      return str(cause).splitlines()[0]
  return None


def intact_steps(root: str, failed_step: Optional[int] = None) -> list[int]:
  """Finished steps on disk (Orbax renames a step into place only when complete)."""
  if not os.path.isdir(root):
    return []
  return sorted(int(d) for d in os.listdir(root) if d.isdigit() and int(d) != failed_step)


def save_error(root: str, step: int, e: BaseException) -> SaveError:
  """The one-line report of a failed save: step, cause, what survives, how to go on."""
  steps = intact_steps(root, step)
  intact = (f'intact checkpoints: steps {", ".join(map(str, steps))} (a re-run resumes from '
            f'{steps[-1]})' if steps else 'no earlier checkpoint is intact')
  return SaveError(f'saving the checkpoint of step {step} in {root} failed: '
                   f'{save_failure_cause(e)}; {intact}; re-run the same command after '
                   'freeing space')


class QuietSaveFailures:
  """Drops Orbax's logged tracebacks of a storage failure, and of the sibling threads it
  stops ('cannot schedule new futures after shutdown'): SaveError reports it in one line."""

  def filter(self, record) -> bool:
    if '/orbax/' not in record.pathname or not record.exc_info:
      return True
    e = record.exc_info[1]
    return not (save_failure_cause(e) is not None
                or 'cannot schedule new futures after' in str(e))


def _from_a_closed_event_loop(error: BaseException) -> bool:
  return isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'


def quiet_closed_loop_callbacks() -> None:
  """After a failed async save, tensorstore's completion callbacks still call into the
  event loop Orbax closed; Python prints each RuntimeError('Event loop is closed') from
  them through sys.excepthook (and unraisablehook). They are fallout, not news: dropped."""
  if getattr(sys.excepthook, 'mlvicx_quiet', False):
    return
  previous_except, previous_unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(kind, value, tb):
    if not _from_a_closed_event_loop(value):
      previous_except(kind, value, tb)

  def unraisablehook(unraisable):
    if not _from_a_closed_event_loop(unraisable.exc_value):
      previous_unraisable(unraisable)

  excepthook.mlvicx_quiet = True
  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def directory_size(path: str) -> int:
  """Bytes under `path` (0 when it does not exist)."""
  total = 0
  for dirpath, _, files in os.walk(path):
    for f in files:
      try:
        total += os.path.getsize(os.path.join(dirpath, f))
      except OSError:
        pass
  return total


def free_space_warning(root: str, last_size: int,
                       margin: float = FREE_SPACE_MARGIN) -> Optional[str]:
  """A warning when the checkpoint filesystem has less room than margin x the last save."""
  if last_size <= 0 or not os.path.isdir(root):
    return None
  free = shutil.disk_usage(root).free
  if free >= margin * last_size:
    return None
  return (f'only {free / 2**20:.1f} MB free on the checkpoint filesystem ({root}); the last '
          f'checkpoint took {last_size / 2**20:.1f} MB (want {margin:g}x that): the next save '
          'may fail for lack of space')


def checkpoint_root(path: str) -> str:
  """Accepts a pretraining workdir (with checkpoints/) or a checkpoint root."""
  path = os.path.abspath(os.fspath(path))
  sub = os.path.join(path, CHECKPOINT_SUBDIR)
  return sub if os.path.isdir(sub) else path


def config_to_json(cfg) -> dict:
  """ConfigDict -> plain JSON types (tuples become lists)."""
  return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)


def model_config_from_json(d: dict) -> ml_collections.ConfigDict:
  """Inverse of config_to_json for model configs: sequences back to tuples."""
  from mlvicx_jax import models  # pylint: disable=g-import-not-at-top
  cfg = models.model_config()
  unknown = set(d) - set(cfg.keys())
  if unknown:
    raise CheckpointError(f'checkpoint meta has unknown model fields {sorted(unknown)}')
  for key, value in d.items():
    cfg[key] = tuple(value) if isinstance(value, list) else value
  return cfg


def save_model(directory: str, variables: dict, meta: dict, step: int = 0) -> str:
  """Writes `model` + `meta` as step `step` of a new CheckpointManager root."""
  directory = os.path.abspath(os.fspath(directory))
  with ocp.CheckpointManager(
      directory, item_names=(MODEL, META),
      options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False)) as mngr:
    mngr.save(step, args=ocp.args.Composite(**{
        MODEL: ocp.args.StandardSave(variables),
        META: ocp.args.JsonSave(meta)}))
  return directory


def restore_model(path: str, step: Optional[int] = None) -> tuple[dict, dict, int]:
  """Reads (variables as numpy, meta, step) from the latest (or given) step."""
  root = checkpoint_root(path)
  if os.path.isfile(root):
    raise CheckpointError(f'{path} is a file, not a checkpoint directory (a pretraining '
                          'workdir, or a folder written by import_torch or the evaluation)')
  if not os.path.isdir(root):
    raise CheckpointError(f'checkpoint directory {path} does not exist')
  handlers = {MODEL: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler(),
              TRAIN: ocp.StandardCheckpointHandler(),
              DATA_ITER: grain.checkpoint.CheckpointHandler()}
  with ocp.CheckpointManager(
      root, item_handlers=handlers,
      options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                           save_interval_steps=0)) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint step found in {root}')
    try:
      meta = mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
      abstract = _abstract_from_metadata(mngr, step)
      variables = mngr.restore(step, args=ocp.args.Composite(**{
          MODEL: ocp.args.StandardRestore(abstract)}))[MODEL]
    except (FileNotFoundError, KeyError, ValueError) as e:
      raise CheckpointError(f'{root} step {step} has no readable model/meta items: {e}') from e
  return jax.tree.map(np.asarray, variables), meta, step


def _abstract_from_metadata(mngr, step):
  """Host-memory restore targets built from the saved shapes (any topology)."""
  metadata = mngr.item_metadata(step)[MODEL]
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices(backend='cpu')[0])
  tree = metadata.tree if hasattr(metadata, 'tree') else metadata
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)


def check_tree(expected: Any, actual: Any, what: str) -> None:
  """Raises naming the first path that is missing, unexpected or of wrong shape."""
  exp = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(expected)}
  act = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(actual)}
  missing = sorted(set(exp) - set(act))
  unexpected = sorted(set(act) - set(exp))
  if missing:
    raise CheckpointError(f'{what}: missing {len(missing)} tensors, e.g. {missing[:3]}')
  if unexpected:
    raise CheckpointError(f'{what}: unexpected {len(unexpected)} tensors, e.g. {unexpected[:3]}')
  for key in exp:
    if tuple(exp[key].shape) != tuple(act[key].shape):
      raise CheckpointError(f'{what}: {key} has shape {tuple(act[key].shape)}, '
                            f'the model expects {tuple(exp[key].shape)}')
