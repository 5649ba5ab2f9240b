"""Weighted mixtures of prepared data sets as one pretraining stream.

`dataset` names one build ('nih', 'nih/s256') or several with weights,
'nih:1,chexpert:2': items `name[/config][:weight]`, comma-separated, weight
1 when left out, > 0. A single item is exactly today's stream, whatever its
weight.

The mixed stream is a pure function of its position, like the single one:
each component's split is shuffled with its own seed (from the run's seed
and the component's index; a new permutation each of its epochs) and
repeated for ever, then grain's `MapDataset.mix` interleaves them by
position, not by sampling: of any N consecutive positions, component i
holds N * w_i / sum(w) up to one (grain first scales the weights so that
the smallest is 100 and truncates to integers, i.e. 1% of the smallest
weight is the resolution). The per-position augmentation, the shard slice
[p::P] and the batching of `pipelines.pretrain_loader` follow unchanged, so
global batches do not depend on the process count and an iterator's state
resumes exactly.

An epoch (for schedules: warm-up, cosine, num_epochs) is the sum of the
components' split sizes in positions; small components are seen more than
once per epoch, large ones less, in proportion to their weights.
"""
from __future__ import annotations

import dataclasses
import math

import grain

from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data import sources
from mlvicx_jax.data import splits as splits_lib


@dataclasses.dataclass(frozen=True)
class Component:
  dataset: str  # 'name' or 'name/config'
  weight: float

  @property
  def name(self) -> str:
    return self.dataset.split('/')[0]


def parse(spec: str) -> list[Component]:
  """The components of `spec`; ValueError naming the bad item."""
  components = []
  for item in str(spec).split(','):
    item = item.strip()
    dataset, has_weight, weight = (part.strip() for part in item.partition(':'))
    if not dataset:
      raise ValueError(f'{spec!r}: empty item {item!r}; expected name[/config][:weight], '
                       "comma-separated, such as 'nih:1,chexpert:2'")
    if dataset.split('/')[0] not in info_lib.DATASETS:
      raise ValueError(f'{spec!r}: item {item!r}: unknown dataset '
                       f'{dataset.split("/")[0]!r}; expected one of {list(info_lib.DATASETS)}')
    try:
      value = float(weight) if has_weight else 1.0
    except ValueError:
      value = math.nan
    if not (math.isfinite(value) and value > 0):
      raise ValueError(f'{spec!r}: item {item!r}: the weight must be a number > 0')
    if any(c.dataset == dataset for c in components):
      raise ValueError(f'{spec!r}: item {item!r}: {dataset} is named twice')
    components.append(Component(dataset, value))
  return components


def is_mixture(spec: str) -> bool:
  return len(parse(spec)) > 1


def canonical(spec: str) -> str:
  """Spaces and unit weights dropped: 'nih:1, chexpert:2.0' -> 'nih,chexpert:2'.

  One item: its name.
  """
  components = parse(spec)
  if len(components) == 1:
    return components[0].dataset
  return ','.join(c.dataset + ('' if c.weight == 1 else f':{c.weight:g}') for c in components)


def component_seed(seed: int, index: int) -> int:
  """Component i's shuffle seed: distinct from the others' and from seed + epoch."""
  return splits_lib.stable_hash(f'mixture component {index}', seed) % 2**32


def check_prepared(data_dir: str, spec: str) -> list[str]:
  """Each component's 'name/config' under data_dir; errors name the missing one.

  Stored image sizes must agree: batches stack the stored images (aug.on='device').
  """
  components = parse(spec)
  resolved = [sources.resolve_dataset(data_dir, c.dataset) for c in components]
  if len(resolved) > 1:
    sizes = {name: sources.stored_image_size(data_dir, name) for name in resolved}
    first = resolved[0]
    for name in resolved[1:]:
      if sizes[name] != sizes[first]:
        raise ValueError(f'{spec!r}: stored image sizes differ: {first} is {sizes[first]} px, '
                         f'{name} is {sizes[name]} px; prepare them with the same --image_size')
  return resolved


def num_examples(data_dir: str, spec: str, split: str) -> int:
  """Positions in one epoch: the sum of the components' split sizes."""
  return sum(sources.num_examples(data_dir, c.dataset, split) for c in parse(spec))


def records(data_dir: str, spec: str, *, split: str, seed: int,
            num_epochs: int | None = None, on_bad_record: str = 'stop') -> grain.MapDataset:
  """The mixed stream of stored records (before augmentation), position by position.

  num_epochs=None streams forever; otherwise num_epochs * num_examples positions.
  A bad record stops the stream, or is replaced within its own build (sources.CheckedSource).
  """
  components = parse(spec)
  check_prepared(data_dir, spec)
  splits = [sources.data_source(data_dir, c.dataset, split, on_bad_record=on_bad_record)
            for c in components]
  parts = [grain.MapDataset.source(source).shuffle(seed=component_seed(seed, i)).repeat()
           for i, source in enumerate(splits)]
  ds = grain.MapDataset.mix(parts, [c.weight for c in components])
  if num_epochs is not None:
    ds = ds[:num_epochs * sum(len(s) for s in splits)]
  return ds
