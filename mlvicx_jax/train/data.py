"""Pretraining input: where the images come from, and this process's stream."""
import os

from mlvicx_jax.data import pipelines
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
  pipelines.resolve_dataset(config.data_dir, config.dataset)  # names what is missing
  return config.data_dir


def num_train_examples(data_dir: str, config) -> int:
  return pipelines.num_examples(data_dir, config.dataset, config.split)


def pretraining_dataset(data_dir: str, config):
  """This process's slice of the global two-view stream (see pipelines.pretrain_loader)."""
  return pipelines.pretrain_loader(
      data_dir, config.dataset, split=config.split, image_size=config.image_size,
      global_batch_size=config.global_batch_size, seed=config.seed, aug=config.aug,
      worker_count=config.worker_count)
