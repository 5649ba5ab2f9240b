"""The pretraining run's checkpoints: the manager, guarded saves and the restore.

Each step holds the model, the meta (run config, rollbacks), the optimiser
and method state, and the input iterator's position (checkpoint.py names
the items). A save that fails for lack of space or any I/O error becomes
one storage.SaveError naming its step and the checkpoints still intact.
"""
import contextlib
import os

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp

from mlvicx_jax import checkpoint
from mlvicx_jax import storage
from mlvicx_jax.train.step import TrainState


def manager(workdir: str, config) -> ocp.CheckpointManager:
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


def train_item(state: TrainState) -> dict:
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
      checkpoint.TRAIN: ocp.args.StandardSave(train_item(state)),
      checkpoint.DATA_ITER: grain.checkpoint.CheckpointSave(data_iter),
  }))


class GuardedSaves:
  """Saves through `mngr`; a storage failure (also one surfacing later from an async
  save) shuts the manager down and raises one storage.SaveError naming its step."""

  def __init__(self, mngr):
    self.mngr, self.root = mngr, os.fspath(mngr.directory)
    self.in_flight, self.warned, self.closed = None, False, False
    storage.quiet_save_failures()

  def save(self, state: TrainState, data_iter, meta: dict, force: bool = False):
    self.wait()  # the previous async save's failure surfaces here, under its own step
    latest = self.mngr.latest_step()
    if not self.warned and latest is not None and jax.process_index() == 0:
      warning = storage.free_space_warning(
          self.root, storage.directory_size(os.path.join(self.root, str(latest))))
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
      if storage.save_failure_cause(e) is None:
        raise
      self.closed = True
      try:  # joins the background threads, so none writes after the message
        self.mngr.close()
      except Exception:  # pylint: disable=broad-except
        pass  # the same failure again
      # The partial `*.orbax-checkpoint-tmp` folder is left to the next run's manager
      # (cleanup_tmp_directories): removing it here races the writes still in flight.
      raise storage.save_error(self.root, step, e) from None


def restore(mngr, step: int, abstract_state: TrainState, data_iter) -> TrainState:
  restored = mngr.restore(step, args=ocp.args.Composite(**{
      checkpoint.MODEL: ocp.args.StandardRestore({'params': abstract_state.params,
                                                  'batch_stats': abstract_state.batch_stats}),
      checkpoint.TRAIN: ocp.args.StandardRestore(train_item(abstract_state)),
      checkpoint.DATA_ITER: grain.checkpoint.CheckpointRestore(data_iter),
  }))
  model, train = restored[checkpoint.MODEL], restored[checkpoint.TRAIN]
  return TrainState(step=train['step'], params=model['params'],
                    batch_stats=model['batch_stats'], opt_state=train['opt_state'],
                    extra=train.get('extra', {}))
