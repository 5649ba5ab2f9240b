"""Seeded splits and label-fraction subsets: nested, order-free, process-free."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np

from conftest import REPO
from mlvicx_jax.data import splits
from mlvicx_jax.data.pipelines import label_fraction_indices

NAMES = [f'{i:08d}_000.png' for i in range(1000)]


def documented_ranking(ids, seed):
  """The rule the docs state: sort by the first 8 bytes of sha256('seed:id')."""
  key = lambda i: int.from_bytes(hashlib.sha256(f'{seed}:{i}'.encode()).digest()[:8], 'big')
  return sorted(ids, key=key)


def chosen(fraction, names=NAMES, seed=0):
  return {names[i] for i in label_fraction_indices(names, fraction, seed)}


def test_fractions_are_nested_and_sized():
  subsets = [chosen(f) for f in (0.01, 0.1, 0.3, 1.0)]
  assert [len(s) for s in subsets] == [10, 100, 300, 1000]
  for small, large in zip(subsets, subsets[1:]):
    assert small < large


def test_fraction_matches_documented_rule():
  assert chosen(0.1, seed=7) == set(documented_ranking(NAMES, 7)[:100])
  assert chosen(0.1, seed=7) != chosen(0.1, seed=8)


def test_independent_of_input_order():
  shuffled = list(np.random.default_rng(3).permutation(NAMES))
  assert chosen(0.3, names=shuffled) == chosen(0.3)
  indices = label_fraction_indices(shuffled, 0.3, 0)
  assert list(indices) == sorted(indices)


def test_same_in_a_fresh_process_with_another_hash_seed():
  code = ('import json; from mlvicx_jax.data.splits import label_fraction_indices as f; '
          f'print(json.dumps(f({NAMES[:200]!r}, 0.1, 5).tolist()))')
  env = dict(os.environ, PYTHONHASHSEED='123')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       env=env, check=True, cwd=REPO)
  assert json.loads(out.stdout) == label_fraction_indices(NAMES[:200], 0.1, 5).tolist()


def test_integer_input_and_small_sets():
  assert len(label_fraction_indices(50, 0.01, 0)) == 1  # At least one example.
  assert set(label_fraction_indices(50, 0.1, 0)) <= set(range(50))
  assert len(label_fraction_indices(50, 1.0, 0)) == 50


def test_assign_groups_exact_counts_and_disjoint():
  patients = [str(p) for p in range(40)] * 3  # Repeated ids count once.
  assignment = splits.assign_groups(patients, {'test': 0.2, 'validation': 0.1}, seed=1)
  counts = {s: sum(v == s for v in assignment.values()) for s in ('train', 'validation', 'test')}
  assert counts == {'train': 28, 'validation': 4, 'test': 8}
  ranking = documented_ranking(sorted(set(patients)), 1)
  assert {p for p, s in assignment.items() if s == 'test'} == set(ranking[:8])
