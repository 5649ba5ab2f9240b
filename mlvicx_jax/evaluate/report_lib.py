"""The evaluation report: aggregation of run records and report.md.

The report (`python -m mlvicx_jax.report`) reads every run record (schema in
`records`) under one or more run directories ("run sets") and writes tables
in the paper's layouts (sections built in `report_markdown`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import collections
import json
import math
import os
import warnings

import numpy as np

from mlvicx_jax.evaluate import dice as dice_lib
from mlvicx_jax.evaluate import metrics
from mlvicx_jax.evaluate import paper_results
from mlvicx_jax.evaluate import records as records_lib
from mlvicx_jax.evaluate import report_markdown as md
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
  when the record does not say) when the paper reports that metric.
  """
  cells = collections.defaultdict(list)
  methods = {}
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
  rows = []
  for key in sorted(cells, key=lambda k: (list(run_sets).index(k[0]),) + k):
    run_set, label, task, protocol, metric, fraction = key
    pairs = sorted(cells[key])
    mean, sd = mean_sd([v for _, v in pairs])
    paper = None
    if metric == paper_results.PAPER_METRIC[task]:
      paper = paper_results.paper_reference(task, protocol, fraction, methods[key])
    rows.append(dict(run_set=run_set, row=label, task=task, protocol=protocol,
                     paper_method=methods[key], metric=metric, fraction=fraction, n=len(pairs),
                     seeds=[s for s, _ in pairs], values=[v for _, v in pairs],
                     mean=mean, sd=sd, paper=paper))
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
  order = lambda k: (paper_results.TASKS.index(k[0]),
                     paper_results.PROTOCOLS.index(k[1]),
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
  predictions = records_lib.load_predictions(record)
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


# --- the report --------------------------------------------------------------


def _unique_labels(run_dirs: Sequence[str],
                   labels: Sequence[str] | None) -> list[str]:
  if labels:
    if len(labels) != len(run_dirs):
      raise ValueError(f'{len(labels)} labels for {len(run_dirs)} run sets')
    names = list(labels)
  else:
    names = [os.path.basename(os.path.normpath(d)) or d for d in run_dirs]
  if len(set(names)) != len(names):
    names = [f'{chr(ord("A") + i)}: {n}' if i < 26 else f'{i}: {n}'
             for i, n in enumerate(names)]
  return names


def build_report(run_dirs: Sequence[str], out_dir: str,
                 labels: Sequence[str] | None = None,
                 all_methods: bool = False, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0, decimals: int = 3,
                 plots: bool = True) -> dict:
  """Reads run sets and writes report.md, summary.json, runs.csv and PNGs.

  Args:
    run_dirs: directories (or globs) of run records, one per run set.
    out_dir: output directory (created).
    labels: names of the run sets (default: directory names).
    all_methods: also list every method of the paper, not only MLVICX.
    n_boot: bootstrap resamples for runs with predictions but no recorded
      CI (0 disables).
    alpha: 0.05 gives 95% intervals.
    seed: bootstrap seed.
    decimals: digits of reproduced numbers in the markdown.
    plots: write the PNG figures.

  Returns:
    {'markdown', 'summary', 'csv': paths, 'plots': [paths]}.
  """
  from mlvicx_jax.evaluate import plots as plots_lib  # matplotlib is slow

  if not run_dirs:
    raise ValueError('no run sets given')
  names = _unique_labels(run_dirs, labels)
  run_sets = {}
  for name, run_dir in zip(names, run_dirs):
    records = records_lib.load_run_records(run_dir)
    check_duplicates(name, records)
    run_sets[name] = records
  os.makedirs(out_dir, exist_ok=True)

  summary = summarize(run_sets)
  floors = summarize_floors(run_sets)
  labelled = [(row_label(name, r), r) for name, records in run_sets.items()
              for r in records]
  per_class = summarize_per_class(labelled)

  run_list = []
  for name, records in run_sets.items():
    for r in sorted(records, key=lambda r: (
        r['task'], r['protocol'], r['label_fraction'], r['seed'])):
      ci, ci_source = run_ci(r, n_boot, alpha, seed)
      run_list.append(dict(
          run_set=name, row=row_label(name, r), task=r['task'],
          protocol=r['protocol'], fraction=fraction_key(r['label_fraction']),
          seed=r['seed'], metric=r['metric_name'],
          value=r['test'][r['metric_name']], ci95=ci, ci_source=ci_source,
          floor=(r.get('floors') or {}).get(r['metric_name']),
          best_epoch=r.get('best_epoch'), checkpoint=r.get('checkpoint'),
          source=r.get(SOURCE_KEY)))

  lines = ['# mlvicx_jax evaluation report', '']
  for name, run_dir in zip(names, run_dirs):
    lines.append(f'- run set **{name}**: `{run_dir}` '
                 f'({len(run_sets[name])} records)')
  lines += ['', 'Protocol (from the records):', '']
  for name, records in run_sets.items():
    lines += md.protocol_lines(name, records)
  lines += ['', 'Reproduced cells: test metric, mean ± sample sd over seeds '
            f'(ddof={SD_DDOF}), n = number of seeds. Paper cells as printed '
            '(MLVICX, JBHI 2024).', '']
  for task in paper_results.TASKS:
    task_rows = [r for r in summary if r['task'] == task]
    if task == 'siim':
      if task_rows:
        lines += md.siim_section(
            {m: [r for r in task_rows if r['metric'] == m]
             for m in md.DICE_METRICS},
            {(f['metric'], f['protocol'], f['fraction']): f['floor']
             for f in floors if f['task'] == task}, all_methods, decimals)
      continue
    paper_metric = paper_results.PAPER_METRIC[task]
    for metric in (paper_metric,) + tuple(
        m for m in METRIC_NAMES if m != paper_metric):
      metric_rows = [r for r in task_rows if r['metric'] == metric]
      for protocol in paper_results.PROTOCOLS:
        rows = [r for r in metric_rows if r['protocol'] == protocol]
        if rows:
          lines += md.classification_section(task, protocol, metric, rows,
                                             all_methods, decimals)
  lines += md.per_class_section(per_class, decimals)
  lines += md.runs_section(run_list, decimals)

  tests = {}
  first = names[0]
  for other in names[1:]:
    tests[f'{first} vs {other}'] = paired_tests(run_sets[first],
                                                run_sets[other])
    lines += md.ttest_section(first, other, tests[f'{first} vs {other}'],
                              decimals)

  plot_paths = []
  if plots:
    plot_paths = plots_lib.write_report_plots(run_sets, summary, out_dir)
    if plot_paths:
      lines += ['## Figures', '']
      lines += [f'![{os.path.basename(p)}]({os.path.basename(p)})'
                for p in plot_paths]
      lines.append('')

  md_path = os.path.join(out_dir, 'report.md')
  records_lib.atomic_write(md_path, '\n'.join(lines))
  summary_path = os.path.join(out_dir, 'summary.json')
  records_lib.atomic_write(summary_path, json.dumps(records_lib.json_ready(
      {'run_sets': dict(zip(names, run_dirs)), 'cells': summary,
       'floors': floors, 'runs': run_list, 'paired_tests': tests}),
      indent=2, allow_nan=False) + '\n')
  csv_path = os.path.join(out_dir, 'runs.csv')
  records_lib.atomic_write(csv_path, records_lib.csv_text(
      [{'run_set': name, **records_lib.flatten_record(r)}
       for name, records in run_sets.items() for r in records]))
  return {'markdown': md_path, 'summary': summary_path, 'csv': csv_path,
          'plots': plot_paths}

