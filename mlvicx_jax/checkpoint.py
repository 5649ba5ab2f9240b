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
