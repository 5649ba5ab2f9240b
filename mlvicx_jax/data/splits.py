"""Seeded, order-independent splits and label-fraction subsets.

Every choice ranks identifiers (file names or patient ids) by a keyed SHA-256
hash, `sha256(f"{seed}:{identifier}")`, and takes a prefix of that ranking.
So the result depends only on the set of identifiers and the seed: not on the
order of the input, the process, the machine or the Python hash seed, and
prefixes of one ranking are nested (1% subset within 10% within 30%).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Mapping, Sequence

import numpy as np


def stable_hash(identifier: str, seed: int) -> int:
  digest = hashlib.sha256(f'{seed}:{identifier}'.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big')


def rank(identifiers: Iterable[str], seed: int) -> list[str]:
  """Distinct identifiers in the seeded pseudo-random order (ties by name)."""
  unique = sorted(set(identifiers))
  return sorted(unique, key=lambda i: (stable_hash(i, seed), i))


def subset_size(total: int, fraction: float) -> int:
  """round(fraction * total), at least 1 for a non-empty set and positive fraction."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'fraction must be in [0, 1], got {fraction}')
  if total == 0 or fraction == 0.0:
    return 0
  return min(total, max(1, int(round(fraction * total))))


def assign_groups(groups: Iterable[str], fractions: Mapping[str, float],
                  seed: int, rest: str = 'train') -> dict[str, str]:
  """Maps every distinct group to a split name.

  The first round(f * n) groups of the ranking go to the first named split,
  the next ones to the second, and so on; the remaining groups go to `rest`.
  Groups are patients for patient-wise splits and images otherwise.
  """
  ranked = rank(groups, seed)
  assignment = {}
  start = 0
  for name, fraction in fractions.items():
    size = subset_size(len(ranked), fraction)
    for group in ranked[start:start + size]:
      assignment[group] = name
    start += size
  if start > len(ranked):
    raise ValueError(f'split fractions {dict(fractions)} exceed 1')
  for group in ranked[start:]:
    assignment[group] = rest
  return assignment


def label_fraction_indices(num_examples_or_ids: int | Sequence[str],
                           fraction: float, seed: int = 0,
                           labels: np.ndarray | None = None) -> np.ndarray:
  """Sorted indices of a seeded subset with round(fraction * n) examples.

  Given identifiers (file names), the subset is the first round(f * n) of the
  hash ranking of those names, returned as positions in the given sequence:
  the same files whatever the input order, nested across fractions, identical
  across runs and machines. Given an int n, the identifiers are "0".."n-1".

  With `labels` (n, K), every class that has a positive in the whole set
  also gets one in the subset: for each class without one, its first-ranked
  positive is added (at most K extra examples). Nesting still holds: a
  prefix that holds a positive of a class holds its first-ranked one.
  """
  if isinstance(num_examples_or_ids, (int, np.integer)):
    ids = [str(i) for i in range(int(num_examples_or_ids))]
  else:
    ids = [i.decode('utf-8') if isinstance(i, bytes) else str(i)
           for i in num_examples_or_ids]
    if len(set(ids)) != len(ids):
      raise ValueError('label_fraction_indices needs distinct identifiers')
  ranking = rank(ids, seed)
  chosen = set(ranking[:subset_size(len(ids), fraction)])
  if labels is not None:
    labels = np.asarray(labels)
    if labels.ndim != 2 or len(labels) != len(ids):
      raise ValueError(f'labels of shape {labels.shape} do not match {len(ids)} identifiers')
    position = {name: i for i, name in enumerate(ids)}
    positive = labels > 0
    for k in range(labels.shape[1]):
      if positive[:, k].any() and not any(positive[position[n], k] for n in chosen):
        chosen.add(next(n for n in ranking if positive[position[n], k]))
  return np.array([i for i, name in enumerate(ids) if name in chosen], np.int64)
