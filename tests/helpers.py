"""The one helpers module of the tests: evaluation configs, checkpoints, variable trees."""
import sys

import jax
import jax.numpy as jnp
import numpy as np

from conftest import load_config
from mlvicx_jax import checkpoint
from mlvicx_jax import models
from mlvicx_jax.evaluate import data as data_lib


def eval_config(task: str, variant: str = 'smoke', **overrides):
  config = load_config(f'configs/eval/{task}.py', variant)
  config.update(overrides)
  return config


def numpy_variables(shapes, seed: int):
  """Random variables of a given structure without compiling an init.

  BatchNorm: scale 1, bias 0, running mean 0, var 1; other kernels He-normal.
  Only for tests that need a structure, never as a 'pretrained' encoder.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], 'key', str(path[-1]))
    if name in ('scale', 'var'):
      return np.ones(leaf.shape, leaf.dtype)
    if name in ('bias', 'mean'):
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) or 1
    return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def save_tiny_checkpoint(directory: str, model_config=None, seed: int = 0) -> str:
  """A checkpoint of the tiny MLVICX layout (numpy variables) whose meta says `model_config`.

  For architecture and error checks only: its statistics are not from data.
  """
  cfg = models.model_config('tiny')
  net = models.build_model(cfg)
  shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                                           train=False))
  meta_cfg = cfg if model_config is None else model_config
  return checkpoint.save_model(directory, numpy_variables(shapes, seed),
                               {'model_config': checkpoint.config_to_json(meta_cfg),
                                'source': 'test'})


def checkpoint_trunk(path: str, keep_context_blocks: bool = True) -> dict:
  """The trunk variables of a saved MLVICX, as the checkpoint holds them."""
  variables, _, _ = checkpoint.restore_model(path)
  keep = lambda k: keep_context_blocks or not k.startswith('cbt')
  return {name: {k: v for k, v in variables[name]['backbone'].items() if keep(k)}
          for name in ('params', 'batch_stats')}


def sub_tree(variables: dict, name: str) -> dict:
  return {'params': variables['params'][name],
          'batch_stats': variables.get('batch_stats', {}).get(name, {})}


def assert_trees_bitwise_equal(a, b):
  flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(v)
                       for p, v in jax.tree_util.tree_leaves_with_path(tree)}
  flat_a, flat_b = flat(a), flat(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)


def split_images(config, data, split, target='label', segmentation=False):
  """Every real image and target of a split, through the evaluation loader."""
  images, targets = [], []
  for batch in data_lib.loader(config, data, split, train=False, segmentation=segmentation):
    keep = np.asarray(batch['mask'], bool)
    images.append(np.asarray(batch['image'])[keep])
    targets.append(np.asarray(batch[target])[keep])
  return np.concatenate(images), np.concatenate(targets)


def sklearn_ece(labels, probs, strategy: str, n_bins: int = 15) -> float:
  """ECE from scikit-learn's calibration_curve and the sizes of the bins it documents,
  (lo, hi]: the independent reference of the calibration tests."""
  from sklearn import calibration as sk_calibration  # pylint: disable=g-import-not-at-top
  prob_true, prob_pred = sk_calibration.calibration_curve(labels, probs, n_bins=n_bins,
                                                          strategy=strategy)
  edges = (np.linspace(0, 1, n_bins + 1) if strategy == 'uniform' else
           np.percentile(probs, np.linspace(0, 1, n_bins + 1) * 100))
  counts = np.bincount(np.searchsorted(edges[1:-1], probs), minlength=n_bins)
  counts = counts[counts > 0]
  assert len(counts) == len(prob_true)
  return float(np.sum(counts * np.abs(prob_true - prob_pred)) / len(probs))


def enospc_command(module: str, failing_save: int) -> list:
  """`python -m module` with Orbax's JSON writer raising ENOSPC on its `failing_save`-th
  call: a full disk at the writer, in a shim around the public command."""
  shim = f"""
import errno, sys, runpy
from orbax.checkpoint._src.handlers import json_checkpoint_handler as h
original, calls = h.JsonCheckpointHandler._save_fn, []
async def failing(self, x, directory):
  calls.append(directory)
  if len(calls) == {failing_save}:
    raise OSError(errno.ENOSPC, 'No space left on device')
  return await original(self, x, directory)
h.JsonCheckpointHandler._save_fn = failing
sys.argv = [{module!r}] + sys.argv[1:]
runpy.run_module({module!r}, run_name='__main__', alter_sys=True)
"""
  return [sys.executable, '-c', shim]
