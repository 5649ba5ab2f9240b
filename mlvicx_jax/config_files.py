"""The repository's config files, read by path.

Model and augmentation values are written once, in configs/nih.py (the
config file holds its values and is readable alone). Code that needs them
without a run config (checkpoints saved before a field existed, the
random-init encoder, importing PyTorch weights) reads them from there.
"""
import functools
import importlib.util
import os
import sys

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def _load(relative_path: str, variant: str) -> ml_collections.ConfigDict:
  path = os.path.join(REPO, relative_path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path} not found (the configs/ folder of the '
                            'repository must sit beside mlvicx_jax/)')
  return load_file(path, variant)


def load_file(path: str, variant: str = '') -> ml_collections.ConfigDict:
  """get_config(variant) of the config file at `path` (as --config=path:variant reads it)."""
  if REPO not in sys.path:  # configs import each other as `configs.*`
    sys.path.append(REPO)
  if not path.endswith('.py'):
    raise ValueError(f'{path} is not a config file (a .py file with get_config(arg))')
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise AttributeError(f'{path} has no get_config(arg): not a config file')
  return module.get_config(variant)


def load(relative_path: str, variant: str = '') -> ml_collections.ConfigDict:
  """get_config(variant) of a config file under the repository root (a fresh copy)."""
  return _load(relative_path, variant).copy_and_resolve_references()


PRETRAINING = 'configs/nih.py'
# models.model_config(variant) -> the configs/nih.py variant that holds it.
MODEL_VARIANTS = {'official': '', 'paper': 'paper', 'tiny': 'smoke'}
