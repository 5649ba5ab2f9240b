"""Pretraining input: the data folder, and a global stream every process slices.

The stream is defined once for the whole job: a per-epoch permutation of the
training images, each position augmented with randomness drawn from (seed,
position). Process p of P takes positions p, p+P, p+2P, ... so global batch b
is always positions [b*G, (b+1)*G), whatever the number of hosts. The loss
and BatchNorm are invariant to the order within a batch, so 1 process with 4
devices and 2 processes with 2 each train on the same batches; and the
iterator state (one integer) resumes exactly.
"""
import os

from absl import logging
import grain
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


def pretraining_dataset(data_dir: str, config, process_index: int = None,
                        process_count: int = None) -> grain.IterDataset:
  """This process's slice of the global two-view stream, batched."""
  if process_index is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  source = pipelines.data_source(data_dir, config.dataset, config.split)
  views = pipelines.TwoViews(config.image_size, config.aug)
  ds = (grain.MapDataset.source(source)
        .shuffle(seed=config.seed)
        .repeat(None)
        .random_map(views, seed=config.seed))
  ds = ds[process_index::process_count]
  ds = ds.batch(config.global_batch_size // process_count, drop_remainder=True)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=16))
  if config.worker_count > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count))
  return ds
