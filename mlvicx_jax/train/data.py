"""Pretraining input: where the images come from, and this process's stream."""
import os

from absl import logging
import jax
from jax.experimental import multihost_utils

from mlvicx_jax.data import pipelines
from mlvicx_jax.data import prepare
from mlvicx_jax.data import synthetic
from mlvicx_jax.train.config_check import ConfigError


def ensure_pretraining_data(config, workdir: str) -> str:
  """The TFDS data_dir to read; makes synthetic NIH in the workdir if configured."""
  if config.data_dir:
    if not os.path.isdir(config.data_dir):
      raise ConfigError(f'config.data_dir: {config.data_dir} does not exist; build it with '
                        f'python -m mlvicx_jax.data.prepare --dataset={config.dataset} '
                        f'--manual_dir=RAW --data_dir={config.data_dir}')
    pipelines.resolve_dataset(config.data_dir, config.dataset)  # names what is missing
    return config.data_dir
  if config.synthetic_images <= 0:
    raise ConfigError('config.data_dir: empty; set it to a folder written by '
                      'mlvicx_jax.data.prepare, or set config.synthetic_images > 0 for a '
                      'synthetic NIH made in the workdir')
  root = os.path.join(os.path.abspath(workdir), 'synthetic_nih')
  data_dir = os.path.join(root, 'tfds')
  if jax.process_index() == 0 and not os.path.isdir(os.path.join(data_dir, config.dataset)):
    raw = os.path.join(root, 'raw')
    logging.info('Writing %d synthetic NIH images to %s', config.synthetic_images, raw)
    synthetic.generate(config.dataset, raw, config.synthetic_images, seed=config.seed,
                       image_size=config.synthetic_image_size)
    prepare.prepare(config.dataset, raw, data_dir, image_size=config.synthetic_image_size,
                    seed=config.seed)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('synthetic pretraining data ready')
  return data_dir


def num_train_examples(data_dir: str, config) -> int:
  return pipelines.num_examples(data_dir, config.dataset, config.split)


def pretraining_dataset(data_dir: str, config):
  """This process's slice of the global two-view stream (see pipelines.pretrain_loader)."""
  return pipelines.pretrain_loader(
      data_dir, config.dataset, split=config.split, image_size=config.image_size,
      global_batch_size=config.global_batch_size, seed=config.seed, aug=config.aug,
      worker_count=config.worker_count)
