"""Which label columns a run uses, and how it reads uncertain labels.

CheXpert's labeller marks a finding 1.0 (positive), 0.0 (negative), -1.0
(uncertain) or leaves it blank (not mentioned). Its build stores `label` = 1
where the cell is 1.0 (so code that knows nothing of uncertainty reads the
U-Zeros labels) and `uncertain` = the cells that were -1.0. One build then
serves every policy (Irvin et al. 2019), chosen when the data are read:

  u_ones   uncertain read as positive
  u_zeros  uncertain read as negative (the stored label)
  ignore   uncertain entries masked out: left out of the loss and of that
           class's AUC (`label_mask` False)

Blanks are negatives under every policy. Datasets without an `uncertain`
feature read the same under all three.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mlvicx_jax.data import info as info_lib

UNCERTAINTY_POLICIES = ('ignore', 'u_ones', 'u_zeros')
DEFAULT_POLICY = 'ignore'
# Named class subsets per dataset (config `classes`), besides 'all' and a comma list.
CLASS_PRESETS = {'chexpert': {'competition': info_lib.CHEXPERT_COMPETITION}}


def check_policy(policy: str) -> str:
  if policy not in UNCERTAINTY_POLICIES:
    raise ValueError(f'uncertain must be one of {UNCERTAINTY_POLICIES}, got {policy!r}')
  return policy


def apply_policy(label, uncertain, policy: str) -> tuple[np.ndarray, np.ndarray]:
  """(label float32, label_mask bool) of one example or a batch under `policy`.

  `uncertain` None: no uncertain entries (every entry is labelled).
  """
  check_policy(policy)
  label = np.asarray(label, np.float32)
  if uncertain is None:
    return label, np.ones(label.shape, bool)
  uncertain = np.asarray(uncertain).astype(bool)
  if policy == 'u_ones':
    return np.maximum(label, uncertain.astype(np.float32)), np.ones(label.shape, bool)
  if policy == 'ignore':
    return np.where(uncertain, np.float32(0), label), ~uncertain
  return label, np.ones(label.shape, bool)


def resolve_classes(spec: str | Sequence[str] | None, class_names: Sequence[str],
                    dataset: str = '') -> tuple[int, ...] | None:
  """Column indices of a class selection; None means every column, in order.

  spec: None, '' or 'all'; a preset of CLASS_PRESETS[dataset] ('competition'
  for CheXpert); or names, as a comma-separated string or a sequence, kept
  in the order given.
  """
  if spec is None or (isinstance(spec, str) and spec.strip() in ('', 'all')):
    return None
  presets = CLASS_PRESETS.get(dataset.split('/')[0], {})
  if isinstance(spec, str):
    names = presets.get(spec.strip()) or [n.strip() for n in spec.split(',') if n.strip()]
  else:
    names = [str(n).strip() for n in spec]
  unknown = [n for n in names if n not in class_names]
  if unknown:
    raise ValueError(f'classes {unknown} are not classes of {dataset or "the build"}: '
                     f"use 'all', one of the presets {sorted(presets)} or names from "
                     f'{list(class_names)}')
  if len(set(names)) != len(names):
    raise ValueError(f'classes {names} name a class twice')
  return tuple(list(class_names).index(n) for n in names)
