"""Aggregation of run records: cells (mean and sd over seeds), per-class AUCs,
empty-prediction floors, paired t-tests between run sets and per-run intervals.

Pure numpy and scipy over validated records; `build` writes them out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import collections
import math
import warnings

import numpy as np

from mlvicx_jax import vocabulary
from mlvicx_jax.evaluate import dice as dice_lib
from mlvicx_jax.evaluate import metrics
from mlvicx_jax.evaluate import record_files
from mlvicx_jax.report import markdown as md
from mlvicx_jax.report import paper_results
from mlvicx_jax.evaluate.records import METRIC_NAMES, SOURCE_KEY

# Standard deviations over seeds are sample standard deviations.
SD_DDOF = 1

# --- aggregation -------------------------------------------------------------


def fraction_key(fraction: float) -> float:
  """Rounded fraction, so 0.1 and 0.1000000001 group together."""
  return round(float(fraction), 6)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample sd (NaN for a single value)."""
  values = np.asarray(values, dtype=np.float64)
  sd = float(np.std(values, ddof=SD_DDOF)) if values.size > 1 else float('nan')
  return float(np.mean(values)), sd


def row_label(run_set: str, record: Mapping) -> str:
  return f'{run_set} / {record["name"]}' if record.get('name') else run_set


def check_duplicates(run_set: str, records: Sequence[Mapping]) -> None:
  """One record per (name, task, protocol, fraction, seed) in a run set."""
  seen = {}
  for record in records:
    key = (record.get('name'), record['task'], record['protocol'],
           fraction_key(record['label_fraction']), record['seed'])
    if key in seen:
      raise ValueError(
          f'run set {run_set!r} has two records for task {key[1]}, protocol '
          f'{key[2]}, fraction {key[3]}, seed {key[4]}: '
          f'{seen[key].get(SOURCE_KEY)} and {record.get(SOURCE_KEY)}; '
          'remove one')
    seen[key] = record


def summarize(run_sets: Mapping[str, Sequence[Mapping]]) -> list[dict]:
  """mean +- sd over seeds per (row, task, protocol, metric, fraction).

  Every scalar test metric a record has is summarised (e.g. RSNA runs give
  accuracy and mean AUC rows); `paper` is the paper's number for the row's
  pretraining method (`paper_method`: its row in the paper's tables, MLVICX's
  when the record does not say) when the paper reports that metric, and None
  when every record of the cell is synthetic (`synthetic`): the paper measured
  real X-rays.
  """
  cells = collections.defaultdict(list)
  methods, synthetic = {}, {}
  for run_set, records in run_sets.items():
    for record in records:
      for metric in METRIC_NAMES:
        value = record['test'].get(metric)
        if value is None or not math.isfinite(value):
          continue
        key = (run_set, row_label(run_set, record), record['task'],
               record['protocol'], metric,
               fraction_key(record['label_fraction']))
        cells[key].append((record['seed'], value))
        methods[key] = paper_results.paper_row((record.get('encoder') or {}).get('method'))
        synthetic[key] = synthetic.get(key, True) and bool(record.get('synthetic_data'))
  rows = []
  for key in sorted(cells, key=lambda k: (list(run_sets).index(k[0]),) + k):
    run_set, label, task, protocol, metric, fraction = key
    pairs = sorted(cells[key])
    mean, sd = mean_sd([v for _, v in pairs])
    paper = None
    if metric == vocabulary.TASK_METRIC[task] and not synthetic[key]:
      paper = paper_results.paper_reference(task, protocol, fraction, methods[key])
    rows.append(dict(run_set=run_set, row=label, task=task, protocol=protocol,
                     paper_method=methods[key], metric=metric, fraction=fraction, n=len(pairs),
                     seeds=[s for s, _ in pairs], values=[v for _, v in pairs],
                     mean=mean, sd=sd, paper=paper, synthetic=synthetic[key]))
  return rows


def summarize_per_class(records: Sequence[tuple[str, Mapping]]) -> dict:
  """{(row, task, protocol): {class: {fraction: (mean, sd, n)}}} of AUCs.

  `records` are (row label, record) pairs.

  NaN (undefined) per-class AUCs are left out of their cell.
  """
  values = collections.defaultdict(
      lambda: collections.defaultdict(lambda: collections.defaultdict(list)))
  for label, record in records:
    per_class = record['test'].get('per_class_auc') or {}
    for cls, auc in per_class.items():
      by_fraction = values[(label, record['task'], record['protocol'])][cls]
      if auc is not None and math.isfinite(auc):
        by_fraction[fraction_key(record['label_fraction'])].append(auc)
  out = {}
  for key, classes in values.items():
    out[key] = {cls: {f: mean_sd(v) + (len(v),) for f, v in fracs.items()}
                for cls, fracs in classes.items()}
  return out


def summarize_floors(run_sets: Mapping[str, Sequence[Mapping]]) -> list[dict]:
  """Mean empty-prediction floor per (task, protocol, metric, fraction).

  Floors are properties of the test split, not of a model, so every record
  of a column counts, whichever run set it is in.
  """
  cells = collections.defaultdict(list)
  for records in run_sets.values():
    for r in records:
      for metric, floor in (r.get('floors') or {}).items():
        if floor is not None and math.isfinite(floor):
          cells[(r['task'], r['protocol'], metric,
                 fraction_key(r['label_fraction']))].append(floor)
  return [dict(zip(('task', 'protocol', 'metric', 'fraction'), key),
               floor=float(np.mean(v)), n=len(v))
          for key, v in sorted(cells.items())]


def paired_tests(records_a: Sequence[Mapping], records_b: Sequence[Mapping]
                 ) -> list[dict]:
  """Paired t-tests of A against B per (task, protocol, metric, fraction).

  Runs are paired by seed. A cell with fewer than two paired seeds, or with
  several records per seed (several names in a run set), gets a `note` and
  no t/p.
  """

  def index(records):
    table = collections.defaultdict(lambda: collections.defaultdict(list))
    for record in records:
      for metric in METRIC_NAMES:
        value = record['test'].get(metric)
        if value is not None and math.isfinite(value):
          key = (record['task'], record['protocol'], metric,
                 fraction_key(record['label_fraction']))
          table[key][record['seed']].append(value)
    return table

  table_a, table_b = index(records_a), index(records_b)
  results = []
  order = lambda k: (vocabulary.TASKS.index(k[0]),
                     vocabulary.PROTOCOLS.index(k[1]),
                     METRIC_NAMES.index(k[2]), k[3])
  for key in sorted(set(table_a) & set(table_b), key=order):
    seeds_a, seeds_b = table_a[key], table_b[key]
    seeds = sorted(set(seeds_a) & set(seeds_b))
    result = dict(zip(('task', 'protocol', 'metric', 'fraction'), key),
                  n=len(seeds), seeds=seeds, t=None, p=None, note='')
    if any(len(seeds_a[s]) > 1 or len(seeds_b[s]) > 1 for s in seeds):
      result['note'] = 'several records per seed (names differ); not paired'
    elif len(seeds) < 2:
      result['note'] = f'{len(seeds)} paired seed(s); a t-test needs 2'
    else:
      a = [seeds_a[s][0] for s in seeds]
      b = [seeds_b[s][0] for s in seeds]
      result['mean_a'], result['mean_b'] = float(np.mean(a)), float(np.mean(b))
      result['mean_diff'] = float(np.mean(np.subtract(a, b)))
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # identical diffs
        t, p = metrics.paired_ttest(a, b)
      if math.isfinite(t) and abs(t) < 1e12:
        result['t'], result['p'] = float(t), float(p)
      else:
        result['note'] = 'differences (nearly) constant: t undefined'
    results.append(result)
  return results


def run_ci(record: Mapping, n_boot: int, alpha: float, seed: int
           ) -> tuple[list[float] | None, str]:
  """The run's CI: the recorded one, else a bootstrap over its predictions.

  Returns (ci or None, source) with source 'record', 'bootstrap' or ''.
  A recorded CI is taken as is (its alpha is the writer's, 95% by schema).
  """
  if record.get('ci95') is not None:
    return list(record['ci95']), 'record'
  predictions = record_files.load_predictions(record)
  if predictions is None or n_boot <= 0:
    return None, ''
  metric = record['metric_name']
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    if metric in md.DICE_METRICS and 'dice_counts' in predictions:
      counts = np.asarray(predictions['dice_counts'], dtype=np.float64)
      ci = metrics.bootstrap_ci(
          counts, counts, lambda _, c: dice_lib.dice_summary(c)[metric],
          n_boot=n_boot, alpha=alpha, seed=seed, skip_single_valued=False)
    elif metric == 'dice' and 'per_image_dice' in predictions:  # older runs
      per_image = np.asarray(predictions['per_image_dice'], dtype=np.float64)
      ci = metrics.bootstrap_ci(
          per_image, per_image, lambda _, s: np.nanmean(s) if np.any(
              ~np.isnan(s)) else np.nan, n_boot=n_boot, alpha=alpha,
          seed=seed, skip_single_valued=False)
    elif metric == 'mean_auc' and 'scores' in predictions:
      ci = metrics.bootstrap_mean_auc_ci(predictions['labels'],
                                         predictions['scores'], n_boot=n_boot,
                                         alpha=alpha, seed=seed)
    elif metric == 'accuracy' and 'scores' in predictions:
      ci = metrics.bootstrap_ci(predictions['labels'], predictions['scores'],
                                metrics.accuracy, n_boot=n_boot, alpha=alpha,
                                seed=seed, skip_single_valued=False)
    else:
      return None, ''
  return [float(ci[0]), float(ci[1])], 'bootstrap'
