r"""Pretraining pairs per second of the grain pipeline, and host CPU per pair.

  python benchmarks/input_pipeline.py                  # builds synthetic NIH in a temp dir
  python benchmarks/input_pipeline.py --data_dir=OUT --dataset=nih/s256

Measures pretrain_loader at --image_size (224) for each --workers count and
each --modes entry, after --warmup batches (worker start-up excluded):
'host' makes both views with numpy/PIL, 'device' only decodes (the views are
made in the train step; benchmarks/train_step.py times that part). Host CPU
is the user + system time of this process and its grain workers.
"""
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlvicx_jax.data import augment  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.data import pipelines  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.data import sources  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.data import prepare as prepare_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'A prepared data_dir; default: synthetic.')
_DATASET = flags.DEFINE_string('dataset', 'nih', "Dataset, e.g. 'nih' or 'nih/s256'.")
_SPLIT = flags.DEFINE_string('split', 'train', 'Split to read.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Crop size of each view.')
_STORED_SIZE = flags.DEFINE_integer('stored_size', 256, 'Synthetic data: stored size.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 512, 'Synthetic data: images.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Pairs per batch.')
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 20, 'Timed batches per setting.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed batches first.')
_WORKERS = flags.DEFINE_list('workers', ['0', '2'], 'Worker counts to try.')
_MODES = flags.DEFINE_list('modes', ['host', 'device'], "aug.on values to try.")


def _cpu_seconds() -> float:
  """User + system CPU of this process and its live children (grain workers)."""
  me = psutil.Process()
  total = 0.0
  for proc in [me] + me.children(recursive=True):
    try:
      times = proc.cpu_times()
      total += times.user + times.system
    except psutil.NoSuchProcess:
      pass
  return total


def measure(data_dir: str, dataset: str, workers: int, mode: str) -> tuple[float, float]:
  """(pairs per second, host CPU milliseconds per pair)."""
  aug = augment.default_augment_config()
  aug.on = mode
  loader = pipelines.pretrain_loader(
      data_dir, dataset, split=_SPLIT.value, image_size=_IMAGE_SIZE.value,
      global_batch_size=_BATCH_SIZE.value, seed=0, worker_count=workers, aug=aug,
      shard_index=0, shard_count=1)
  iterator = iter(loader)
  for _ in range(_WARMUP.value):
    next(iterator)
  cpu, start = _cpu_seconds(), time.perf_counter()
  for _ in range(_NUM_BATCHES.value):
    next(iterator)
  elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
  del iterator
  pairs = _NUM_BATCHES.value * _BATCH_SIZE.value
  return pairs / elapsed, 1000 * cpu / pairs


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    data_dir, dataset = _DATA_DIR.value, _DATASET.value
    if data_dir is None:
      raw, data_dir = os.path.join(tmp, 'raw'), os.path.join(tmp, 'out')
      synthetic.generate('nih', raw, _NUM_IMAGES.value, seed=0, image_size=_STORED_SIZE.value)
      prepare_lib.prepare('nih', raw, data_dir, image_size=_STORED_SIZE.value)
      dataset = 'nih'
    count = sources.num_examples(data_dir, dataset, _SPLIT.value)
    print(f'\n{dataset} {_SPLIT.value}: {count} images -> two {_IMAGE_SIZE.value}px views, '
          f'batch {_BATCH_SIZE.value}, {os.cpu_count()} CPUs')
    print('| aug.on | grain workers | pairs/s | host CPU ms/pair |')
    print('|---|---|---|---|')
    for mode in _MODES.value:
      for workers in _WORKERS.value:
        rate, cpu_ms = measure(data_dir, dataset, int(workers), mode)
        print(f'| {mode} | {workers} | {rate:.1f} | {cpu_ms:.2f} |', flush=True)


if __name__ == '__main__':
  app.run(main)
