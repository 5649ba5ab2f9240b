"""Downstream data: the prepared build of a task, its loaders and label subsets.

Label subsets (SPEC section 4, label fractions 1/10/30/100 %):
  'fixed'     one subset for every seed (`label_subset_seed`), as the
              official code: the spread over seeds is over initialisations
              and data order only.
  'per_seed'  the run's seed also draws the subset (the paper's paired
              t-test over runs with random label subsets).
Both are nested across fractions (a prefix of one seeded ranking of file
names). With `positive_per_class`, each class that has a positive in the
training split gets at least one in the subset (its first-ranked positive
is added; see `splits.label_fraction_indices`): at NIH 1% some classes
otherwise have none, and their AUC measures nothing the probe could learn.

Label columns and uncertain labels (config `classes`, `uncertain`;
data/label_policy.py): TaskData holds the chosen columns and policy, and
every loader, label subset and record of the task reads through them.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Iterable, Optional, Sequence

import ml_collections
import numpy as np

SPLITS = ('train', 'validation', 'test')
LABEL_SUBSETS = ('fixed', 'per_seed')


@dataclasses.dataclass
class TaskData:
  """A prepared dataset and how to read it."""
  data_dir: str
  dataset: str               # 'name/config' as built under data_dir
  class_names: tuple         # the chosen label columns, in order
  sizes: dict                # split -> number of examples
  class_indices: Optional[tuple] = None  # their positions in the build; None: all
  uncertain: Optional[str] = None        # policy; None: the build has no uncertain labels
  synthetic: bool = False                # built from mlvicx_jax.synthetic's images

  @functools.cached_property
  def train_metadata(self) -> tuple[list, np.ndarray]:
    """(file names, labels) of the training split, read once, images not decoded.

    Labels under the task's policy, masked entries as 0 (not a positive).
    """
    from mlvicx_jax.data import sources  # pylint: disable=g-import-not-at-top
    return sources.file_names_and_labels(self.data_dir, self.dataset, 'train', self.policy,
                                         self.class_indices)

  @property
  def policy(self) -> str:
    """The uncertainty policy to read with (any reads alike without uncertain labels)."""
    from mlvicx_jax.data import label_policy  # pylint: disable=g-import-not-at-top
    return self.uncertain or label_policy.DEFAULT_POLICY

  def label_record(self) -> Optional[dict]:
    """The record's `label_policy`: the uncertainty policy and classes used.

    None when there is nothing to say: no uncertain labels, every class.
    """
    if self.uncertain is None and self.class_indices is None:
      return None
    return {'uncertain': self.uncertain, 'classes': list(self.class_names)}


def open_task_data(data_dir: str, task: str, splits: Sequence[str] = SPLITS, *,
                   uncertain: Optional[str] = None, classes=None, build: str = '') -> TaskData:
  """Finds the prepared build of `task`; error naming the folder and the prepare command.

  `build` names one of several builds ('s256_physician'); '' reads the only one (or s256).

  `classes` ('all', a preset such as CheXpert's 'competition', or names) and
  `uncertain` (label_policy.UNCERTAINTY_POLICIES, default 'ignore') choose the
  labels; the policy is recorded only for builds with uncertain labels.
  """
  from mlvicx_jax.data import sources  # pylint: disable=g-import-not-at-top
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  prepare_cmd = (f'python -m mlvicx_jax.data.prepare --dataset={task} '
                 f'--manual_dir=<downloaded {task} files> --data_dir={data_dir}')
  expected = os.path.join(data_dir, task)
  if not os.path.isdir(expected):
    raise FileNotFoundError(
        f'{task} has not been prepared: expected the TFDS directory {expected} '
        f'(under config.data_dir={data_dir}); build it with: {prepare_cmd}')
  dataset = sources.resolve_dataset(data_dir, f'{task}/{build}' if build else task)
  try:
    sizes = {split: sources.num_examples(data_dir, dataset, split) for split in splits}
  except (FileNotFoundError, ValueError, KeyError, OSError) as e:
    raise FileNotFoundError(f'cannot read the prepared {task} data in {expected}: {e}. '
                            f'Rebuild it with: {prepare_cmd} --overwrite') from e
  for split in splits:
    if split != 'test' and not sizes[split]:
      raise ValueError(f'{expected}: split {split!r} is empty')
  from mlvicx_jax.data import label_policy  # pylint: disable=g-import-not-at-top
  names = sources.class_names(data_dir, dataset)
  try:
    indices = label_policy.resolve_classes(classes, names, task)
  except ValueError as e:
    raise ValueError(f'config.{e}') from None
  policy = None
  if sources.has_feature(data_dir, dataset, 'uncertain'):
    policy = label_policy.check_policy(uncertain or label_policy.DEFAULT_POLICY)
  if indices is not None:
    names = tuple(names[i] for i in indices)
  return TaskData(data_dir, dataset, names, sizes, indices, policy,
                  sources.is_synthetic(data_dir, dataset))


# --- label subsets ------------------------------------------------------------------


@dataclasses.dataclass
class Subset:
  """The labelled training examples of one run."""
  indices: Optional[np.ndarray]  # positions in the train split; None: all of it
  record: dict                   # the run record's `label_subset` field

  @property
  def size(self) -> int:
    return self.record['size']


def train_subset(config, data: TaskData, fraction: float, seed: int) -> Subset:
  """The run's label subset, by config.label_subset (see the module docstring)."""
  subset_seed = int(config.label_subset_seed) if config.label_subset == 'fixed' else int(seed)
  record = {'mode': config.label_subset, 'seed': subset_seed,
            'positive_per_class': bool(config.positive_per_class)}
  n = data.sizes['train']
  if fraction >= 1.0:
    return Subset(None, dict(record, size=n, added_for_positives=0))
  from mlvicx_jax.data import splits  # pylint: disable=g-import-not-at-top
  names, labels = data.train_metadata
  indices = splits.label_fraction_indices(names, fraction, subset_seed,
                                          labels if config.positive_per_class else None)
  added = len(indices) - splits.subset_size(n, fraction)
  return Subset(indices, dict(record, size=len(indices), added_for_positives=added))


# --- loaders ------------------------------------------------------------------------


def augment_config(name: str) -> ml_collections.ConfigDict:
  """Training augmentation of the downstream loaders.

  'official': the official downstream transform, resize the whole image and
  flip horizontally with probability 1/2 (its RandomGrayscale does nothing to
  an X-ray). 'mild': the data package's default (crop 70-100 %, flip,
  brightness/contrast jitter).
  """
  from mlvicx_jax.data import augment  # pylint: disable=g-import-not-at-top
  aug = augment.default_classification_augment_config()
  if name == 'official':
    aug.view.crop_scale = (1.0, 1.0)
    aug.view.crop_ratio = (1.0, 1.0)
    aug.view.jitter_prob = 0.0
    aug.view.rotation_prob = 0.0
  elif name != 'mild':
    raise ValueError(f"config.augment must be 'official' or 'mild', got {name!r}")
  return aug


def loader(config, data: TaskData, split: str, *, train: bool,
           indices: Optional[np.ndarray] = None, seed: int = 0,
           num_epochs: Optional[int] = 1, batch_size: Optional[int] = None,
           segmentation: bool = False):
  """A grain loader of one split (training: shuffled, augmented; `indices`: a subset)."""
  from mlvicx_jax.data import pipelines  # pylint: disable=g-import-not-at-top
  if batch_size is None:
    batch_size = config.batch_size if train else config.eval_batch_size
  common = dict(split=split, image_size=config.image_size, batch_size=batch_size, seed=seed,
                train=train, indices=indices, worker_count=config.worker_count,
                num_epochs=num_epochs, aug=augment_config(config.augment), shard_index=0,
                shard_count=1)
  if segmentation:
    return pipelines.segmentation_loader(data.data_dir, data.dataset, **common)
  return pipelines.classification_loader(data.data_dir, data.dataset, **common,
                                         uncertain=data.policy,
                                         classes=data.class_indices)


def bn_calibration_images(config, data: TaskData) -> Iterable[np.ndarray]:
  """Batches of un-augmented training images for BatchNorm re-estimation.

  config.encoder.bn_batches batches of config.encoder.bn_batch_size images,
  a seeded draw from the whole training split (no labels are used).
  """
  n = data.sizes['train']
  count = min(n, int(config.encoder.bn_batches) * int(config.encoder.bn_batch_size))
  indices = np.sort(np.random.default_rng(0).permutation(n)[:count])
  batches = loader(config, data, 'train', train=False, indices=indices,
                   batch_size=int(config.encoder.bn_batch_size))
  for batch in batches:
    images = np.asarray(batch['image'])[np.asarray(batch['mask'], bool)]
    if len(images):
      yield images


def real_rows(batch: dict) -> dict:
  """The batch without its padding rows (they are at the end).

  Training BatchNorm must not see padding; the one short batch at the end of
  a stream costs one extra compilation.
  """
  count = int(np.asarray(batch['mask']).sum())
  if count == len(batch['mask']):
    return batch
  return {k: np.asarray(v)[:count] for k, v in batch.items()}


def epoch_batches(stream, steps: int):
  """The next `steps` real batches of an endless stream (None when it ends)."""
  for _ in range(steps):
    batch = next(stream, None)
    if batch is None:
      return
    batch = real_rows(batch)
    if len(batch['mask']) >= 2:  # BN statistics of one example are meaningless
      yield batch


def file_names(batch: dict, keep) -> list:
  return [n.decode() if isinstance(n, bytes) else str(n)
          for n in np.asarray(batch['file_name'])[keep]]


def collect(batches: Iterable[dict], fn: Callable[[Any], Any],
            target: str = 'label') -> tuple[np.ndarray, np.ndarray, list]:
  """Runs fn over each batch's images; keeps real rows: (outputs, targets, file names).

  Masked labels (label_mask False) come back as NaN, which the metrics leave out.
  """
  outputs, targets, names = [], [], []
  for batch in batches:
    keep = np.asarray(batch['mask'], bool)
    if not keep.any():
      continue
    outputs.append(np.asarray(fn(batch['image']))[keep])
    values = np.asarray(batch[target])
    if target == 'label' and 'label_mask' in batch:
      values = np.where(np.asarray(batch['label_mask'], bool), values, np.nan)
    targets.append(values[keep])
    names += file_names(batch, keep)
  if not outputs:
    raise ValueError('a split yielded no batches')
  return np.concatenate(outputs), np.concatenate(targets), names
