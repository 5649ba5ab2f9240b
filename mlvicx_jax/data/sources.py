"""The prepared builds as random-access sources: which build, its splits, its facts.

`dataset` is a name of info.DATASETS (the one build of it under data_dir, or
its default config 's256' / 's256_any') or 'name/config' such as 'nih/s128'
or 'vinbig/s256_majority'. Builds are opened from their own feature
description, so what an older version wrote stays readable.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data import label_policy
from mlvicx_jax.data import verify

def resolve_dataset(data_dir: str, dataset: str) -> str:
  """'name' or 'name/config' -> the 'name/config' built under data_dir."""
  name, _, config = dataset.partition('/')
  info_lib.dataset_info(name)  # Validates the name.
  if config:
    return dataset
  root = os.path.join(data_dir, name)
  built = sorted(c for c in (os.listdir(root) if os.path.isdir(root) else [])
                 if not c.startswith('.') and os.path.isdir(os.path.join(root, c)))
  if len(built) == 1:
    return f'{name}/{built[0]}'
  for default in ('s256', 's256_any'):
    if default in built:
      return f'{name}/{default}'
  if not built:
    raise FileNotFoundError(
        f'no build of {name!r} under {root}; run python -m mlvicx_jax.data.prepare '
        f'--dataset={name} --manual_dir=RAW --data_dir={data_dir}')
  raise ValueError(f'several builds of {name!r} under {root}: {built}; name one: '
                   f'--config.build=<config> for an evaluation, --config.dataset={name}/<config> '
                   'for pretraining')


def read_only_builder(data_dir: str, dataset: str):
  """The build's own description (the newest version folder), not this code's.

  So raw (1.1.0) and PNG (1.0.0) builds read alike, whatever builder code
  this process has registered.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name = resolve_dataset(data_dir, dataset)
  folder = os.path.join(data_dir, name)
  versions = sorted((v for v in (os.listdir(folder) if os.path.isdir(folder) else [])
                     if tfds.core.Version.is_valid(v)), key=tfds.core.Version)
  if not versions:
    raise FileNotFoundError(f'no finished build in {folder}; run python -m '
                            f'mlvicx_jax.data.prepare --dataset={name.split("/")[0]} '
                            f'--manual_dir=RAW --data_dir={data_dir}')
  return tfds.builder_from_directory(os.path.join(folder, versions[-1]))


def data_source(data_dir: str, dataset: str, split: str, decoders=None,
                on_bad_record: str = 'stop'):
  """Random-access source of decoded examples (image (S, S, 1) uint8, ...).

  A record that does not read or decode raises BadRecordError naming it, or
  with on_bad_record='skip' is replaced by the next good one (CheckedSource).
  """
  try:
    builder = read_only_builder(data_dir, dataset)
    source = builder.as_data_source(split=split, decoders=decoders)
    shards = [(os.fspath(f.filename), f.skip, f.take if f.take >= 0 else f.num_examples)
              for f in builder.info.splits[split].file_instructions]
  except FileNotFoundError:
    raise
  except Exception as e:  # tfds errors do not always name the folder.
    raise type(e)(f'cannot open split {split!r} of {dataset} in {data_dir}: {e}') from e
  return CheckedSource(source, os.fspath(builder.data_dir), split, shards, on_bad_record)


ON_BAD_RECORD = ('stop', 'skip')


class BadRecordError(RuntimeError):
  """A stored record does not read or decode: the build is damaged, rebuild it."""


_skipped = set()  # (shard, record) this process replaced; see skipped_records().
SKIPPED_FIELD = 'bad_records_skipped'


def skipped_records() -> int:
  """Bad records this process has skipped so far (on_bad_record='skip')."""
  return len(_skipped)


class CheckedSource:
  """A tfds source whose unreadable records are named, then stopped on or skipped.

  The array_record reader fails a corrupted block with a Riegeli message that
  names neither file nor record, and every resume meets it again. Here a
  failed read or decode of position i becomes BadRecordError (build, shard
  file, record in it, the rebuild command); with on_bad_record='skip' it
  becomes the first good record of i+1, i+2, ... (mod len): a rule of the
  data alone, so the stream, and a resumed one, do not depend on timing.
  In skip mode every record carries SKIPPED_FIELD, the bad records it
  replaces (0 for most), which the pretraining loop counts in its metrics.
  `shards`: (file, first record, records) of the split, in order.
  """

  def __init__(self, source, build_dir: str, split: str,
               shards: Sequence[tuple[str, int, int]], on_bad_record: str = 'stop'):
    if on_bad_record not in ON_BAD_RECORD:
      raise ValueError(f'on_bad_record: {on_bad_record!r}, expected one of {ON_BAD_RECORD}')
    self._source = source
    self._build_dir = build_dir
    self._split = split
    self._shards = list(shards)
    self._on_bad_record = on_bad_record

  def __len__(self) -> int:
    return len(self._source)

  def locate(self, index: int) -> tuple[str, int]:
    """(shard file, record index in it) of position `index` of the split."""
    rest = index
    for path, skip, take in self._shards:
      if rest < take:
        return path, skip + rest
      rest -= take
    raise IndexError(f'record {index} of a split of {len(self)}')

  def _error(self, index: int, e: Exception) -> BadRecordError:
    path, record = self.locate(index)
    reason = (str(e).strip().splitlines() or [''])[0][:200]
    return BadRecordError(
        f'{self._build_dir}: record {record} of {path} ({self._split} record {index}) does '
        f'not read: {type(e).__name__}: {reason}; rebuild the dataset with '
        f'{verify.rebuild_command(self._build_dir)}'
        + (' (or set config.on_bad_record=skip to train past bad records)'
           if self._on_bad_record == 'stop' else ''))

  def __getitem__(self, index: int):
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f'record {index} of a split of {len(self)}')
    for step in range(len(self)):
      candidate = (index + step) % len(self)
      try:
        record = self._source[candidate]
      except Exception as e:  # pylint: disable=broad-except  (Riegeli, decode errors)
        error = self._error(candidate, e)
        if self._on_bad_record == 'stop':
          raise error from None
        key = self.locate(candidate)
        if key not in _skipped:
          _skipped.add(key)
          from absl import logging  # pylint: disable=g-import-not-at-top
          logging.warning('skipping bad record (on_bad_record=skip; %d so far): %s',
                          len(_skipped), error)
        continue
      if self._on_bad_record == 'skip':  # how many bad records this one stands in for
        record = dict(record, **{SKIPPED_FIELD: np.int32(step)})
      return record
    raise BadRecordError(f'{self._build_dir}: no record of {self._split} reads; rebuild the '
                         f'dataset with {verify.rebuild_command(self._build_dir)}')


def class_names(data_dir: str, dataset: str) -> tuple[str, ...]:
  """The label columns of a build, in order (a folder build's come from its CSV)."""
  return tuple(read_only_builder(data_dir, dataset).info.metadata['class_names'])


def is_synthetic(data_dir: str, dataset: str) -> bool:
  """Whether a build was made from mlvicx_jax.synthetic's images (builds before the
  flag existed read as real)."""
  return bool(read_only_builder(data_dir, dataset).info.metadata.get('synthetic', False))


def has_feature(data_dir: str, dataset: str, name: str) -> bool:
  """Whether a build stores `name` (CheXpert's 'uncertain', say)."""
  return name in read_only_builder(data_dir, dataset).info.features


def num_examples(data_dir: str, dataset: str, split: str) -> int:
  return len(data_source(data_dir, dataset, split))


def _undecoded_source(data_dir: str, dataset: str, split: str):
  """A split's records with images (and masks) left encoded: cheap to scan."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  skip = tfds.decode.SkipDecoding()
  info = info_lib.dataset_info(dataset)
  decoders = {'image': skip, **({'mask': skip} if info.has_mask else {})}
  return data_source(data_dir, dataset, split, decoders=decoders)


def file_names(data_dir: str, dataset: str, split: str) -> list[str]:
  """File names of a split in record order, without decoding images."""
  source = _undecoded_source(data_dir, dataset, split)
  return [source[i]['file_name'].decode('utf-8') for i in range(len(source))]


def file_names_and_labels(data_dir: str, dataset: str, split: str,
                          uncertain: str = label_policy.DEFAULT_POLICY,
                          classes: Sequence[int] | None = None) -> tuple[list[str], np.ndarray]:
  """File names and (N, K) labels (`uncertain` policy, masked read 0) of a split, one pass."""
  source = _undecoded_source(data_dir, dataset, split)
  records = [source[i] for i in range(len(source))]
  labels = np.stack([np.asarray(r['label'], np.float32) for r in records])
  flags = (np.stack([np.asarray(r['uncertain']) for r in records])
           if records and 'uncertain' in records[0] else None)
  labels = label_policy.apply_policy(labels, flags, uncertain)[0]
  return ([r['file_name'].decode('utf-8') for r in records],
          labels if classes is None else labels[:, list(classes)])


def boxes(data_dir: str, dataset: str, split: str,
          include_empty: bool = False) -> dict[str, np.ndarray]:
  """{file_name: float32 (N, 5)} of a split's boxed images, without decoding images.

  Columns x, y, w, h (top-left corner and size, in the stored image's pixels,
  0 to stored_image_size) and the class index into class_names(). An image
  may have several boxes, two of one class too. include_empty: every image
  of the split, (0, 5) for those without boxes. Raises ValueError for a
  build without boxes (NIH built without BBox_List_2017.csv, other datasets).
  """
  if 'num_boxes' not in read_only_builder(data_dir, dataset).info.metadata:
    raise ValueError(f'{dataset} in {data_dir} stores no boxes; build NIH with '
                     'BBox_List_2017.csv in the manual_dir')
  source = _undecoded_source(data_dir, dataset, split)
  out = {}
  for i in range(len(source)):
    record = source[i]
    stored = np.asarray(record['boxes'], np.float32).reshape(-1, 5)
    if len(stored) or include_empty:
      out[record['file_name'].decode('utf-8')] = stored
  return out


class SubsetSource:
  """The records of `source` at `indices` (label-fraction subsets)."""

  def __init__(self, source, indices: Sequence[int]):
    self._source = source
    self._indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int):
    return self._source[int(self._indices[index])]


class PaddedSource:
  """`source` followed by padding records (flagged '_valid' False) up to `length`."""

  def __init__(self, source, length: int):
    self._source = source
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int):
    real = index < len(self._source)
    record = dict(self._source[index if real else 0])
    record['_valid'] = real
    return record


def stored_image_size(data_dir: str, dataset: str) -> int:
  """Side of the square images a build stores."""
  return int(read_only_builder(data_dir, dataset).info.features['image'].shape[0])

