"""grain input pipelines over the array_record builds (`tfds.data_source`).

Three loaders (a grain IterDataset for pretraining, grain DataLoaders for
the others); `iter(loader)` gives an iterator with `get_state()` /
`set_state()`, which the trainer stores in its checkpoint to resume mid-epoch:

  pretrain_loader        {'view1', 'view2'}: two augmented views, float32
                         (B, H, W, 3), ImageNet-normalised; full batches only.
                         With aug.on='device': {'image' (B, S, S, 1) uint8,
                         'position' (B,) uint32}, views made in the step.
  classification_loader  {'image', 'label' (B, K), 'label_mask' (B, K), 'file_name',
                         'mask' (B,)}; label_mask False: uncertain label left out.
  segmentation_loader    {'image', 'mask_target' (B, H, W, 1), 'label',
                         'file_name', 'mask' (B,)}.

'mask' marks real examples: batches keep a static shape, and the padding
rows (mask False) must be left out of losses and metrics. Evaluation visits
every example exactly once; every process gets the same number of batches.
Each process reads its own shard (by default jax.process_index() of
jax.process_count()); B is the per-process batch.

`dataset` names a build as in sources.py; pretrain_loader also takes a
weighted mixture of builds ('nih:1,chexpert:2', mixture.py).
"""
from __future__ import annotations

import math
from typing import Sequence

import grain
import numpy as np

from mlvicx_jax.data import augment
from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data import label_policy
from mlvicx_jax.data import sources
from mlvicx_jax.data import splits as splits_lib

label_fraction_indices = splits_lib.label_fraction_indices
dataset_info = info_lib.dataset_info


def _shard(shard_index, shard_count) -> tuple[int, int]:
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index {shard_index} not in [0, {shard_count})')
  return shard_index, shard_count


def _loader(source, *, operations, shard, shuffle, seed, num_epochs, worker_count,
            drop_remainder):
  sampler = grain.samplers.IndexSampler(
      num_records=len(source),
      shard_options=grain.sharding.ShardOptions(shard[0], shard[1],
                                                drop_remainder=drop_remainder),
      shuffle=shuffle, num_epochs=num_epochs, seed=seed)
  return grain.DataLoader(
      data_source=source, sampler=sampler, operations=operations,
      worker_count=worker_count, worker_buffer_size=2,
      read_options=grain.ReadOptions(num_threads=4, prefetch_buffer_size=64))


# ----------------------------------------------------------------------------
# Transforms (module-level classes: worker processes unpickle them).


class TwoViews(grain.transforms.RandomMap):
  """Two independently augmented, normalised views of one image."""

  def __init__(self, image_size: int, aug):
    aug = augment.as_dict(aug)
    self._size = image_size
    self._views = (aug['view1'], aug['view2'])
    self._mean, self._std = aug['mean'], aug['std']

  def random_map(self, element, rng: np.random.Generator):
    image = element['image'][..., 0]
    views = {name: augment.normalize(augment.augment_view(image, rng, cfg, self._size),
                                     self._mean, self._std)
             for name, cfg in zip(('view1', 'view2'), self._views)}
    return dict(views, **_skip_count(element))


def _skip_count(element) -> dict:
  """The bad records this one replaced, when the source skips them (on_bad_record='skip')."""
  field = sources.SKIPPED_FIELD
  return {field: element[field]} if field in element else {}


class StreamPosition(grain.transforms.MapWithIndex):
  """The stored uint8 image and its position in the global stream ('device' mode).

  The train step makes both views from these (device_augment.two_views).
  """

  def map_with_index(self, index: int, element):
    return {'image': element['image'], 'position': np.uint32(index % 2**32),
            **_skip_count(element)}


class _Supervised:
  """Common output of supervised examples; labels under label_policy, `classes` columns."""

  def __init__(self, image_size: int, aug, segmentation: bool,
               uncertain: str = label_policy.DEFAULT_POLICY,
               classes: Sequence[int] | None = None):
    aug = augment.as_dict(aug)
    self._size = image_size
    self._view = aug['view']
    self._mean, self._std = aug['mean'], aug['std']
    self._segmentation = segmentation
    self._uncertain = label_policy.check_policy(uncertain)
    self._classes = None if classes is None else np.asarray(classes, np.int64)

  def _output(self, element, image, mask_target):
    valid = element.get('_valid', True)
    label, label_mask = label_policy.apply_policy(
        element['label'], element.get('uncertain'), self._uncertain)
    if self._classes is not None:
      label, label_mask = label[self._classes], label_mask[self._classes]
    out = {'image': augment.normalize(image, self._mean, self._std),
           'label': label * valid, 'label_mask': label_mask & bool(valid),
           'file_name': element['file_name'] if valid else b'',
           'mask': np.bool_(valid)}
    if self._segmentation:
      out['mask_target'] = (mask_target > 127).astype(np.float32)[..., None]
    return out


class TrainExample(_Supervised, grain.transforms.RandomMap):
  """Random crop, flip and mild jitter (mask: same geometry, nearest)."""

  def random_map(self, element, rng: np.random.Generator):
    image = element['image'][..., 0]
    if self._segmentation:
      image, mask = augment.augment_image_and_mask(
          image, element['mask'][..., 0], rng, self._view, self._size)
      return self._output(element, image, mask)
    return self._output(element, augment.augment_view(image, rng, self._view, self._size), None)


class EvalExample(_Supervised, grain.transforms.Map):
  """Deterministic resize of the whole image (and mask, nearest)."""

  def map(self, element):
    image = augment.resize_unit(element['image'][..., 0], self._size)
    mask = (augment.resize_unit(element['mask'][..., 0], self._size, nearest=True)
            if self._segmentation else None)
    return self._output(element, image, mask)


class PadBatch(grain.transforms.Map):
  """Pads a short batch to batch_size with zero rows whose 'mask' is False."""

  def __init__(self, batch_size: int):
    self._batch_size = batch_size

  def map(self, batch):
    count = len(batch['mask'])
    if count == self._batch_size:
      return batch
    padded = {}
    for key, value in batch.items():
      value = np.asarray(value)
      fill = np.zeros((self._batch_size - count,) + value.shape[1:], value.dtype)
      padded[key] = np.concatenate([value, fill])
    return padded


# ----------------------------------------------------------------------------
# Loaders.


def pretrain_loader(data_dir: str, dataset: str, *, split: str = 'train',
                    image_size: int, global_batch_size: int, seed: int,
                    aug=None, worker_count: int = 0, num_epochs: int | None = None,
                    shard_index: int | None = None, shard_count: int | None = None,
                    on_bad_record: str = 'stop'):
  """This process's two-view batches {'view1', 'view2'} of global_batch_size / shard_count.

  The stream is defined once for the whole job: a new permutation of the
  images every epoch, each stream position augmented with randomness from
  (seed, position). Shard p of P takes positions p, p + P, ..., so global
  batch b is positions [b*G, (b+1)*G) whatever P is: one process with four
  devices and two processes with two see the same batches (the loss and
  BatchNorm do not depend on the order inside a batch). Labels are not
  read; batches are full; num_epochs=None streams forever. Returns a grain
  IterDataset; its iterator's get_state()/set_state() resume exactly.

  With augment.placement(aug) == 'device' the host only decodes: batches hold the
  stored uint8 images and their stream positions, and the train step makes
  the views (device_augment.two_views, keyed by seed and position).

  `dataset` may be a weighted mixture of builds, 'nih:1,chexpert:2'; its
  records are interleaved by position before all of the above (mixture.py).

  A record that does not read stops the stream with sources.BadRecordError
  naming it; on_bad_record='skip' reads the next good record of its build in
  its place (sources.CheckedSource), and batches then hold
  sources.SKIPPED_FIELD, the count of bad records each example replaced.
  """
  shard = _shard(shard_index, shard_count)
  if global_batch_size % shard[1]:
    raise ValueError(f'global_batch_size {global_batch_size} is not divisible by '
                     f'{shard[1]} processes')
  aug = augment.default_augment_config() if aug is None else aug
  from mlvicx_jax.data import mixture  # pylint: disable=g-import-not-at-top  (imports this module)
  components = mixture.parse(dataset)
  if len(components) > 1:  # 'nih:1,chexpert:2': one stream of records by position
    ds = mixture.records(data_dir, dataset, split=split, seed=seed, num_epochs=num_epochs,
                         on_bad_record=on_bad_record)
  else:
    dataset = components[0].dataset
    source = sources.data_source(data_dir, dataset, split, on_bad_record=on_bad_record)
    if len(source) < global_batch_size:
      raise ValueError(f'{dataset} {split}: {len(source)} examples cannot fill one global '
                       f'batch of {global_batch_size}')
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(num_epochs)
  if augment.placement(aug) == 'device':
    ds = ds.map_with_index(StreamPosition())
  else:
    ds = ds.random_map(TwoViews(image_size, aug), seed=seed)
  ds = ds[shard[0]::shard[1]].batch(global_batch_size // shard[1], drop_remainder=True)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=16))
  if worker_count > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return ds


def _supervised_loader(data_dir, dataset, *, split, image_size, batch_size, seed, train,
                       label_fraction, worker_count, num_epochs, shard_index, shard_count,
                       aug, segmentation, indices,
                       uncertain=label_policy.DEFAULT_POLICY, classes=None):
  shard = _shard(shard_index, shard_count)
  aug = augment.default_classification_augment_config() if aug is None else aug
  source = sources.data_source(data_dir, dataset, split)
  if indices is not None:
    if label_fraction < 1.0:
      raise ValueError('give label_fraction or indices, not both')
    source = sources.SubsetSource(source, indices)
  elif label_fraction < 1.0:
    names = sources.file_names(data_dir, dataset, split)
    source = sources.SubsetSource(source, label_fraction_indices(names, label_fraction, seed))
  if train:
    transform = TrainExample(image_size, aug, segmentation, uncertain, classes)
    return _loader(source, operations=[transform, grain.transforms.Batch(batch_size),
                                       PadBatch(batch_size)],
                   shard=shard, shuffle=True, seed=seed, num_epochs=num_epochs,
                   worker_count=worker_count, drop_remainder=True)
  # Evaluation: pad so that every process and worker ends on a full batch.
  chunk = batch_size * max(1, worker_count)
  per_shard = math.ceil(math.ceil(len(source) / shard[1]) / chunk) * chunk
  padded = sources.PaddedSource(source, per_shard * shard[1])
  transform = EvalExample(image_size, aug, segmentation, uncertain, classes)
  return _loader(padded, operations=[transform, grain.transforms.Batch(batch_size),
                                     PadBatch(batch_size)],
                 shard=shard, shuffle=False, seed=None, num_epochs=num_epochs,
                 worker_count=worker_count, drop_remainder=True)


def classification_loader(data_dir: str, dataset: str, *, split: str, image_size: int,
                          batch_size: int, seed: int, train: bool,
                          label_fraction: float = 1.0, worker_count: int = 0,
                          num_epochs: int | None = 1, shard_index: int | None = None,
                          shard_count: int | None = None, aug=None,
                          indices: Sequence[int] | None = None,
                          uncertain: str = label_policy.DEFAULT_POLICY,
                          classes: Sequence[int] | None = None):
  """Batches {'image', 'label', 'label_mask', 'file_name', 'mask'} of batch_size per process.

  train: shuffled, augmented (aug: default_classification_augment_config()),
  on the seeded label_fraction subset (label_fraction_indices over file
  names, nested across fractions). Otherwise deterministic, in record order,
  each example once (num_epochs=1). `indices` (positions in the split)
  replace label_fraction when the caller chose the subset itself. `uncertain`
  (label_policy.UNCERTAINTY_POLICIES) reads CheXpert's uncertain labels;
  `classes` keeps those label columns, in that order (None: all).
  """
  return _supervised_loader(
      data_dir, dataset, split=split, image_size=image_size, batch_size=batch_size,
      seed=seed, train=train, label_fraction=label_fraction, worker_count=worker_count,
      num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count, aug=aug,
      segmentation=False, indices=indices, uncertain=uncertain, classes=classes)


def segmentation_loader(data_dir: str, dataset: str = 'siim', *, split: str,
                        image_size: int, batch_size: int, seed: int, train: bool,
                        label_fraction: float = 1.0, worker_count: int = 0,
                        num_epochs: int | None = 1, shard_index: int | None = None,
                        shard_count: int | None = None, aug=None,
                        indices: Sequence[int] | None = None):
  """As classification_loader, plus 'mask_target' (B, H, W, 1) float32 0/1."""
  if not info_lib.dataset_info(dataset).has_mask:
    raise ValueError(f'{dataset} has no segmentation masks')
  return _supervised_loader(
      data_dir, dataset, split=split, image_size=image_size, batch_size=batch_size,
      seed=seed, train=train, label_fraction=label_fraction, worker_count=worker_count,
      num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count, aug=aug,
      segmentation=True, indices=indices)


def steps_per_epoch(data_dir: str, dataset: str, split: str, global_batch_size: int,
                    label_fraction: float = 1.0) -> int:
  """Full batches per epoch (at least 1), for schedules and early stopping."""
  count = sources.num_examples(data_dir, dataset, split)
  count = splits_lib.subset_size(count, label_fraction)
  return max(1, count // global_batch_size)

