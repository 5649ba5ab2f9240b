r"""Two-view pretraining pairs per second of the grain pipeline.

  python benchmarks/input_pipeline.py                  # builds synthetic NIH in a temp dir
  python benchmarks/input_pipeline.py --data_dir=OUT --dataset=nih/s256

Measures pretrain_loader at --image_size (224) for each --workers count,
after --warmup batches (worker start-up excluded), and prints a table.
"""
import os
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlvicx_jax.data import pipelines  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.data import prepare as prepare_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.data import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'A prepared data_dir; default: synthetic.')
_DATASET = flags.DEFINE_string('dataset', 'nih', "Dataset, e.g. 'nih' or 'nih/s256'.")
_SPLIT = flags.DEFINE_string('split', 'train', 'Split to read.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Crop size of each view.')
_STORED_SIZE = flags.DEFINE_integer('stored_size', 256, 'Synthetic data: stored size.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 512, 'Synthetic data: images.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Pairs per batch.')
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 20, 'Timed batches per setting.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed batches first.')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'], 'Worker counts to try.')


def measure(data_dir: str, dataset: str, workers: int) -> float:
  loader = pipelines.pretrain_loader(
      data_dir, dataset, split=_SPLIT.value, image_size=_IMAGE_SIZE.value,
      global_batch_size=_BATCH_SIZE.value, seed=0, worker_count=workers,
      shard_index=0, shard_count=1)
  iterator = iter(loader)
  for _ in range(_WARMUP.value):
    next(iterator)
  start = time.perf_counter()
  for _ in range(_NUM_BATCHES.value):
    next(iterator)
  elapsed = time.perf_counter() - start
  del iterator
  return _NUM_BATCHES.value * _BATCH_SIZE.value / elapsed


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    data_dir, dataset = _DATA_DIR.value, _DATASET.value
    if data_dir is None:
      raw, data_dir = os.path.join(tmp, 'raw'), os.path.join(tmp, 'out')
      synthetic.generate('nih', raw, _NUM_IMAGES.value, seed=0, image_size=_STORED_SIZE.value)
      prepare_lib.prepare('nih', raw, data_dir, image_size=_STORED_SIZE.value)
      dataset = 'nih'
    count = pipelines.num_examples(data_dir, dataset, _SPLIT.value)
    print(f'\n{dataset} {_SPLIT.value}: {count} images -> two {_IMAGE_SIZE.value}px views, '
          f'batch {_BATCH_SIZE.value}, {os.cpu_count()} CPUs')
    print(f'{"workers":>8} | {"pairs/s":>8}')
    print(f'{"-" * 8}-+-{"-" * 8}')
    for workers in _WORKERS.value:
      rate = measure(data_dir, dataset, int(workers))
      print(f'{workers:>8} | {rate:8.1f}', flush=True)


if __name__ == '__main__':
  app.run(main)
