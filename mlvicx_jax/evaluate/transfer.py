"""Transfer across hospitals: a classifier trained on build A, tested on build B.

`run(config, workdir)` (configs/eval/transfer.py) trains, for each dataset of
`transfer.train_on`, every (label fraction, seed) run of a normal
classification run on A (harness.run: its run records, saved classifiers,
skip-existing). Each run's saved classifier is then scored, in the same
invocation and by the same code, on A's test split (the in-domain row) and
on the test split of every build B of `transfer.test_on`, over the findings
A and B share (data/shared_findings.py): the classifier's output for A's
class is read against B's label of the same finding. Every build's labels
are read through its own uncertainty policy (`config.uncertain`, for builds
that have uncertain labels: CheXpert), so B's masked entries leave B's AUC.

Per finding: AUC on both test splits, the drop (B minus A) and bootstrap 95%
intervals over images, A's and B's images resampled independently (A with
`bootstrap_seed`, B with `bootstrap_seed + 1`; the resamples and the
skipping of single-valued resamples are those of `metrics`; the drop's
draws pair the k-th kept draw of B with the k-th of A). Means are over
the findings whose AUC is defined on both splits, so both rows of a pair
cover the same findings. One transfer record per (A, B, protocol, fraction,
seed); schema in `transfer_record` (TRANSFER_SPEC).

Transfer records are recomputed on every invocation (a forward pass over
the test splits), so they always describe the saved classifiers.
"""
from __future__ import annotations

import os
from typing import Sequence
import warnings

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from mlvicx_jax import vocabulary
from mlvicx_jax.data import shared_findings
from mlvicx_jax.evaluate import classification
from mlvicx_jax.evaluate import data as data_lib
from mlvicx_jax.evaluate import harness
from mlvicx_jax.evaluate import metrics
from mlvicx_jax.evaluate import record_files
from mlvicx_jax.evaluate import records
from mlvicx_jax.evaluate import transfer_record

BOOTSTRAP_SEED = 0  # A's resamples; B's use BOOTSTRAP_SEED + 1
ALPHA = 0.05


def check_config(config) -> None:
  """Rejects a bad `transfer` section before any data is read, naming the field."""
  section = config.get('transfer')
  if section is None:
    raise ValueError('config.transfer is missing: use configs/eval/transfer.py')
  train_on, test_on = tuple(section.train_on), tuple(section.test_on)
  if not train_on or any(a not in vocabulary.CLASSIFICATION_TASKS for a in train_on):
    raise ValueError(f'config.transfer.train_on must name datasets of '
                     f'{vocabulary.CLASSIFICATION_TASKS}, got {train_on}')
  if not test_on or any(b not in shared_findings.DATASETS for b in test_on):
    raise ValueError(f'config.transfer.test_on must name datasets of '
                     f'{shared_findings.DATASETS}, got {test_on}')
  if not config.save_model:
    raise ValueError('config.save_model must be True: the transfer is scored with the saved '
                     'classifiers')
  if int(config.n_boot) < 0:
    raise ValueError(f'config.n_boot must be >= 0, got {config.n_boot}')


def train_config(config, dataset: str):
  """The classification config of the runs on `dataset` (the transfer config, task A)."""
  out = config.copy_and_resolve_references()
  out.task = dataset
  return out


# --- the numbers (pure numpy) ----------------------------------------------------------


def bootstrap_draws(labels, scores, n_boot: int, seed: int) -> np.ndarray:
  """Mean AUC of each of n_boot resamples of the rows; NaN where a resample is skipped.

  The resamples and the skipping (a class with both label values in the
  data drawn single-valued) are those of `metrics.bootstrap_mean_auc_ci`
  with the same seed, so the percentiles of the finite draws are its interval.
  """
  labels = np.asarray(labels, np.float64).reshape(len(labels), -1)
  scores = np.asarray(scores, np.float64).reshape(len(scores), -1)
  statistic = metrics.weighted_mean_auc(labels, scores)
  rng = np.random.default_rng(seed)
  n = labels.shape[0]
  draws = np.full(n_boot, np.nan)
  for i in range(n_boot):
    value = statistic(np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64))
    if value is not None:
      draws[i] = value
  return draws


def interval(draws: np.ndarray, alpha: float = ALPHA):
  """Percentile interval of the finite draws; None when there are none."""
  draws = draws[np.isfinite(draws)]
  if not draws.size:
    return None
  low, high = np.percentile(draws, [100 * alpha / 2, 100 * (1 - alpha / 2)])
  return [float(low), float(high)]


def difference_draws(in_draws: np.ndarray, out_draws: np.ndarray) -> np.ndarray:
  """B's draws minus A's: the k-th finite draw of one minus the k-th finite of the other.

  A's and B's images are resampled independently, so any pairing of their
  draws samples the difference; pairing the finite ones keeps every draw
  that the shorter list has.
  """
  a, b = in_draws[np.isfinite(in_draws)], out_draws[np.isfinite(out_draws)]
  count = min(len(a), len(b))
  return b[:count] - a[:count]


def _aucs(labels, scores) -> np.ndarray:
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', metrics.SingleValuedClassWarning)
    return metrics.per_class_auc(labels, scores)


def _side(labels, scores, aucs, columns, n_boot, seed) -> tuple[dict, list]:
  """One split's SCORES (transfer_record.TRANSFER_SPEC) and the draws of its mean and findings."""
  per_finding, draws = {}, []
  for k in range(labels.shape[1]):
    column = (bootstrap_draws(labels[:, k], scores[:, k], n_boot, seed)
              if n_boot and np.isfinite(aucs[k]) else np.full(n_boot, np.nan))
    draws.append(column)
    per_finding[k] = {'auc': aucs[k], 'ci95': interval(column),
                      'positives': int(np.sum(labels[:, k] == 1)),
                      'labelled': int(np.sum(~np.isnan(labels[:, k])))}
  mean_draws = (bootstrap_draws(labels[:, columns], scores[:, columns], n_boot, seed)
                if n_boot and columns else np.full(n_boot, np.nan))
  mean = float(np.mean(aucs[columns])) if columns else None
  return ({'n_images': int(labels.shape[0]), 'mean_auc': mean, 'ci95': interval(mean_draws),
           'per_finding': per_finding}, [mean_draws] + draws)


def pair_fields(findings: Sequence[str], in_labels, in_scores, out_labels, out_scores,
                n_boot: int, seed: int = BOOTSTRAP_SEED) -> dict:
  """The record's in_mean flags, in_domain, transferred and drop of one (A, B) pair.

  Labels and scores are (N, K) with one column per finding, in `findings`
  order (NaN labels: masked); `in_*` are A's test split, `out_*` B's.
  """
  in_labels, out_labels = (np.asarray(a, np.float64) for a in (in_labels, out_labels))
  in_scores, out_scores = (np.asarray(a, np.float64) for a in (in_scores, out_scores))
  in_auc, out_auc = _aucs(in_labels, in_scores), _aucs(out_labels, out_scores)
  both = [k for k in range(len(findings)) if np.isfinite(in_auc[k]) and np.isfinite(out_auc[k])]
  in_domain, in_draws = _side(in_labels, in_scores, in_auc, both, n_boot, seed)
  transferred, out_draws = _side(out_labels, out_scores, out_auc, both, n_boot, seed + 1)
  drops = [interval(difference_draws(a, b)) for a, b in zip(in_draws, out_draws)]
  name = lambda part: {findings[k]: v for k, v in part['per_finding'].items()}
  in_domain['per_finding'], transferred['per_finding'] = name(in_domain), name(transferred)
  difference = lambda a, b: None if a is None or b is None else b - a
  drop = {'mean_auc': difference(in_domain['mean_auc'], transferred['mean_auc']),
          'ci95': drops[0],
          'per_finding': {f: {'value': difference(records.finite_or_none(in_auc[k]),
                                                  records.finite_or_none(out_auc[k])),
                              'ci95': drops[k + 1]} for k, f in enumerate(findings)}}
  return {'in_mean': [k in both for k in range(len(findings))], 'in_domain': in_domain,
          'transferred': transferred, 'drop': drop}


# --- the runs -------------------------------------------------------------------------


def _open(config, dataset: str, classes=None) -> data_lib.TaskData:
  data = data_lib.open_task_data(config.data_dir, dataset, ('test',),
                                 uncertain=config.get('uncertain'), classes=classes)
  if not data.sizes['test']:
    raise ValueError(f'{dataset} in {data.data_dir}: the test split is empty')
  return data


def plan(config, train_on: str) -> tuple[data_lib.TaskData, dict]:
  """(A's data as trained, {B: (B's test data over the shared findings, findings)}).

  Reads only build metadata, so a missing build or a pair without a shared
  finding stops the command before anything trains.
  """
  from mlvicx_jax.data import sources  # pylint: disable=g-import-not-at-top
  trained = _open(config, train_on, config.get('classes'))
  pairs = {}
  for test_on in config.transfer.test_on:
    if test_on == train_on:
      continue  # the in-domain row of every pair is A's own test split
    full = _open(config, test_on)
    found = shared_findings.shared(train_on, test_on, trained.class_names,
                                   sources.class_names(full.data_dir, full.dataset))
    if not found:
      raise ValueError(f'{train_on} (classes {list(trained.class_names)}) and {test_on} share '
                       'no finding of data/shared_findings.py: nothing to transfer')
    pairs[test_on] = (_open(config, test_on, [b for _, _, b in found]), found)
  return trained, pairs


def _predictor(model):
  """jit(variables, images) -> probabilities of a restored classifier."""
  return jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, train=False)))


def split_scores(config, data: data_lib.TaskData, predict, variables, split: str = 'test'):
  """(scores (N, K of the classifier), labels (N, K of `data`; NaN: masked), file names)."""
  return data_lib.collect(data_lib.loader(config, data, split, train=False),
                          lambda images: predict(variables, jnp.asarray(images)))


def run(config, workdir: str) -> list[dict]:
  """The runs on every training build, then their transfer records; all validated."""
  check_config(config)
  workdir = os.path.abspath(workdir)
  plans = {a: plan(train_config(config, a), a) for a in config.transfer.train_on}
  out = []
  for train_on, (trained, pairs) in plans.items():
    a_config = train_config(config, train_on)
    runs = harness.run(a_config, workdir, classification)
    out += runs
    if not pairs:
      continue
    predict = None
    for run_record in runs:
      if not run_record.get('model'):
        raise ValueError(f'{run_record[records.SOURCE_KEY]} has no saved classifier; rerun '
                         'with --config.skip_existing=False')
      model, variables = classification.restore_classifier(run_record['model'])
      if predict is None:  # one compilation for every run of A
        predict = _predictor(model)
      in_split = split_scores(a_config, trained, predict, variables)  # once for every B
      for test_on, (tested, found) in pairs.items():
        out_split = split_scores(a_config, tested, predict, variables)
        out.append(score_pair(a_config, run_record, trained, test_on, tested, found, in_split,
                              out_split, workdir))
  return out


def score_pair(config, run_record: dict, trained, test_on: str, tested, found, in_split,
               out_split, workdir: str) -> dict:
  """The transfer record of one run and one B from both splits' (scores, labels, files)."""
  common = [c for c, _, _ in found]
  columns = [list(trained.class_names).index(a) for _, a, _ in found]
  in_scores, in_labels, in_files = in_split
  out_scores, out_labels, out_files = out_split
  in_scores, in_labels = in_scores[:, columns], in_labels[:, columns]
  out_scores = out_scores[:, columns]
  fields = pair_fields(common, in_labels, in_scores, out_labels, out_scores, config.n_boot)
  record = {
      'schema_version': records.SCHEMA_VERSION, 'kind': transfer_record.TRANSFER_KIND,
      'train_on': run_record['task'], 'test_on': test_on,
      'protocol': run_record['protocol'], 'label_fraction': run_record['label_fraction'],
      'seed': run_record['seed'], 'checkpoint': run_record['checkpoint'],
      'name': run_record.get('name'),
      'run_record': os.path.basename(run_record[records.SOURCE_KEY]),
      'model': run_record['model'],
      'findings': {c: {'train_class': a, 'test_class': b, 'in_mean': flag}
                   for (c, a, b), flag in zip(found, fields['in_mean'])},
      'in_domain': fields['in_domain'], 'transferred': fields['transferred'],
      'drop': fields['drop'], 'n_boot': int(config.n_boot), 'bootstrap_seed': BOOTSTRAP_SEED,
      'label_policy': {'train': trained.uncertain, 'test': tested.uncertain},
      'synthetic_data': bool(trained.synthetic or tested.synthetic), 'predictions': None}
  predictions = {'labels': out_labels, 'scores': out_scores, 'file_names': np.asarray(out_files),
                 'in_domain_labels': in_labels, 'in_domain_scores': in_scores,
                 'in_domain_file_names': np.asarray(in_files), 'class_names': np.asarray(common)}
  path = record_files.write_transfer_record(workdir, record, predictions)
  logging.info('%s -> %s: mean AUC over %d shared findings %s (in-domain %s) -> %s',
               record['train_on'], record['test_on'], sum(fields['in_mean']),
               record['transferred']['mean_auc'], record['in_domain']['mean_auc'], path)
  return record_files.load_transfer_records(path)[0]
