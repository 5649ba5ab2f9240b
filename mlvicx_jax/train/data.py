"""Pretraining input: where the images come from, and this process's stream.

config.dataset names one prepared build ('nih', 'folder/s256') or a weighted
mixture of several ('nih:1,chexpert:2', data/mixture.py).
"""
import os

from mlvicx_jax.data import mixture
from mlvicx_jax.data import pipelines
from mlvicx_jax.data import sources
from mlvicx_jax.train.config_check import ConfigError


def check_data_dir(config) -> str:
  """The TFDS data_dir to read, checked before anything is compiled."""
  if not config.data_dir:
    raise ConfigError('config.data_dir: empty; set it to a folder written by '
                      'python -m mlvicx_jax.data.prepare (configs with synthetic_images > 0 '
                      'get a synthetic NIH made in the workdir by mlvicx_jax.main)')
  if not os.path.isdir(config.data_dir):
    raise ConfigError(f'config.data_dir: {config.data_dir} does not exist; build it with '
                      f'python -m mlvicx_jax.data.prepare --dataset={config.dataset} '
                      f'--manual_dir=RAW --data_dir={config.data_dir}')
  try:
    mixture.check_prepared(config.data_dir, config.dataset)  # names what is missing
  except ValueError as e:  # several builds of one name, image sizes that differ
    raise ConfigError(f'config.dataset: {e}') from e
  return config.data_dir


def num_train_examples(data_dir: str, config) -> int:
  """Positions in one epoch (a mixture's: the sum of its components' splits)."""
  return mixture.num_examples(data_dir, config.dataset, config.split)


def pretraining_dataset(data_dir: str, config):
  """This process's slice of the global two-view stream (see pipelines.pretrain_loader)."""
  return pipelines.pretrain_loader(
      data_dir, config.dataset, split=config.split, image_size=config.image_size,
      global_batch_size=config.global_batch_size, seed=config.seed, aug=config.aug,
      worker_count=config.worker_count, on_bad_record=config.get('on_bad_record', 'stop'))


def monitor_dataset(data_dir: str, config) -> str:
  """The labelled build the k-NN monitor scores: config.monitor.dataset, else the first component."""
  chosen = config.monitor.get('dataset', '') or mixture.parse(config.dataset)[0].dataset
  try:
    if mixture.is_mixture(chosen):
      raise ValueError('a mixture; name one prepared labelled build')
    chosen = mixture.parse(chosen)[0].dataset
    classes = sources.class_names(data_dir, chosen)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f'config.monitor.dataset: the k-NN monitor reads {chosen!r}: {e}') from e
  if not classes:
    raise ConfigError(
        f'config.monitor.every_steps: {config.monitor.every_steps}, but the k-NN monitor\'s '
        f'dataset {chosen} (config.monitor.dataset; default: the first of config.dataset) has '
        'no labels; set --config.monitor.every_steps=0, or --config.monitor.dataset to a '
        'labelled build under config.data_dir (a folder built with --labels_csv, nih, ...)')
  return chosen
