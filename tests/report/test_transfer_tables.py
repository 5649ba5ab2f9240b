"""The transfer matrix and per-finding tables of the report, and the transfer record schema.

References: scikit-learn's roc_auc_score on each record's saved predictions,
numpy means and sample sds over seeds, and the run records' own test AUC for
the diagonal.
"""
import json
import os
import re

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from mlvicx_jax.evaluate import record_files
from mlvicx_jax.evaluate import records
from mlvicx_jax.evaluate import transfer_record
from mlvicx_jax.evaluate import transfer
from mlvicx_jax.report import build

FINDINGS = {'pleural effusion': ('Effusion', 'Pleural Effusion'),
            'edema': ('Edema', 'Edema'), 'pneumonia': ('Pneumonia', 'Pneumonia')}


def sklearn_auc(labels, scores):
  keep = ~np.isnan(labels)
  y = labels[keep]
  return sk_metrics.roc_auc_score(y, scores[keep]) if 0 < y.sum() < len(y) else np.nan


def write_pair(out_dir, seed, n_boot=30, test_on='chexpert'):
  """A transfer record of random predictions (pneumonia one-valued on B) and A's run record."""
  rng = np.random.default_rng(seed)
  in_labels = (rng.random((80, 3)) < 0.3).astype(np.float64)
  in_scores = rng.random((80, 3)) + 0.4 * in_labels
  out_labels = (rng.random((60, 3)) < 0.3).astype(np.float64)
  out_labels[rng.random((60, 3)) < 0.2] = np.nan
  out_labels[:, 2] = np.where(np.isnan(out_labels[:, 2]), np.nan, 0.0)
  out_scores = rng.random((60, 3)) + 0.1 * np.nan_to_num(out_labels)
  fields = transfer.pair_fields(list(FINDINGS), in_labels, in_scores, out_labels, out_scores,
                                n_boot)
  run = records.make_record('nih', 'frozen', 1.0, seed, 'ckpt', {
      'mean_auc': 0.6 + 0.05 * seed, 'per_class_auc': {f'c{k}': 0.6 for k in range(14)}},
      ci95=[0.5, 0.7], synthetic_data=True)
  run_path = record_files.write_run_record(out_dir, run)
  record = {'schema_version': 1, 'kind': 'transfer', 'train_on': 'nih', 'test_on': test_on,
            'protocol': 'frozen', 'label_fraction': 1.0, 'seed': seed, 'checkpoint': 'ckpt',
            'name': None, 'run_record': os.path.basename(run_path), 'model': None,
            'findings': {c: {'train_class': a, 'test_class': b, 'in_mean': flag}
                         for (c, (a, b)), flag in zip(FINDINGS.items(), fields['in_mean'])},
            'in_domain': fields['in_domain'], 'transferred': fields['transferred'],
            'drop': fields['drop'], 'n_boot': n_boot, 'bootstrap_seed': 0,
            'label_policy': {'train': None, 'test': 'ignore'}, 'synthetic_data': True,
            'predictions': None}
  return record_files.write_transfer_record(out_dir, record, {
      'labels': out_labels, 'scores': out_scores, 'in_domain_labels': in_labels,
      'in_domain_scores': in_scores, 'class_names': np.asarray(list(FINDINGS))})


def saved_aucs(path):
  """Per-finding (in-domain, transferred) AUCs from the saved predictions, with sklearn."""
  (record,) = record_files.load_transfer_records(path)
  p = record_files.load_predictions(record)
  side = lambda prefix: np.array([sklearn_auc(p[f'{prefix}labels'][:, k],
                                              p[f'{prefix}scores'][:, k]) for k in range(3)])
  return side('in_domain_'), side('')


def test_matrix_and_per_finding_rows_over_seeds(tmp_path):
  runs = str(tmp_path / 'runs')
  paths = [write_pair(runs, seed) for seed in (0, 1)]
  out = build.build_report([runs], str(tmp_path / 'report'), plots=False)
  with open(out['summary']) as f:
    cells = json.load(f)['transfer']
  aucs = [saved_aucs(p) for p in paths]
  kept = [k for k in range(3) if all(np.isfinite(a[0][k]) and np.isfinite(a[1][k])
                                     for a in aucs)]
  assert kept == [0, 1]  # pneumonia is one-valued on B: out of both means
  means = [np.mean(a[1][kept]) for a in aucs]
  (off,) = [c for c in cells if c['test_on'] == 'chexpert']
  assert off['mean'] == pytest.approx(np.mean(means))
  assert off['sd'] == pytest.approx(np.std(means, ddof=1)) and off['n'] == 2
  assert off['in_domain'] == pytest.approx(np.mean([np.mean(a[0][kept]) for a in aucs]))
  assert off['findings'] == 2
  (diagonal,) = [c for c in cells if c['test_on'] == 'nih']
  run_aucs = [0.6, 0.65]  # the run records' test mean AUC, as written above
  assert diagonal['kind'] == 'in-domain' and diagonal['mean'] == pytest.approx(np.mean(run_aucs))
  with open(out['markdown']) as f:
    text = f.read()
  assert '### Transfer matrix: runs, frozen (linear probe), 100% (synthetic data)' in text
  row = next(line for line in text.splitlines() if line.startswith('| NIH ChestX-ray14 |'))
  assert f'{np.mean(means):.3f} ± {np.std(means, ddof=1):.3f} (n=2) (2 findings)' in row
  assert row.startswith(f'| NIH ChestX-ray14 | {np.mean(run_aucs):.3f} ± '
                        f'{np.std(run_aucs, ddof=1):.3f} (n=2) (14 classes) |')
  effusion = next(line for line in text.splitlines() if line.startswith('| pleural effusion |'))
  in_domain = [a[0][0] for a in aucs]
  assert f'| {np.mean(in_domain):.3f} ± {np.std(in_domain, ddof=1):.3f} (n=2) |' in effusion
  assert re.search(r'^\| pneumonia † \|', text, re.M)


def test_one_seed_shows_the_records_intervals(tmp_path):
  runs = str(tmp_path / 'runs')
  path = write_pair(runs, 0, test_on='padchest')
  (record,) = record_files.load_transfer_records(path)
  out = build.build_report([runs], str(tmp_path / 'report'), plots=False)
  with open(out['markdown']) as f:
    text = f.read()
  low, high = record['transferred']['ci95']
  _, transferred = saved_aucs(path)
  value = np.mean(transferred[[0, 1]])
  assert f'| {value:.3f} [{low:.3f}, {high:.3f}] (2 findings) |' in text
  assert '| trained on \\ tested on | NIH ChestX-ray14 | PadChest |' in text


def test_bad_transfer_records_are_named(tmp_path):
  good_path = write_pair(str(tmp_path / 'good'), 0)
  with open(good_path) as f:
    good = json.load(f)
  cases = [({'kind': 'run'}, 'kind'), ({'test_on': 'mimic'}, 'test_on'),
           ({'train_on': 'siim'}, 'train_on'), ({'label_fraction': 0}, 'label_fraction'),
           ({'drop': {**good['drop'], 'ci95': [0.2]}}, 'drop.ci95'),
           ({'in_domain': {**good['in_domain'], 'per_finding': {}}}, 'in_domain.per_finding')]
  for i, (change, field) in enumerate(cases):
    path = tmp_path / f'case{i}' / 'transfer_record_bad.json'
    path.parent.mkdir()
    path.write_text(json.dumps({**good, **change}))
    with pytest.raises(ValueError, match=re.escape(str(path))) as error:
      record_files.load_transfer_records(str(path.parent))
    assert field in str(error.value)
  missing = {k: v for k, v in good.items() if k != 'findings'}
  with pytest.raises(ValueError, match='findings'):
    transfer_record.validate_transfer_record(missing)
  assert record_files.load_transfer_records(str(tmp_path / 'case0' / 'nothing')) == []
