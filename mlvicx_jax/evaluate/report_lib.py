"""Run records of evaluation runs, and the report built from them.

Every evaluation run (one task, protocol, label fraction and seed) writes a
run record: `run_record_<task>_<protocol>_f<fraction>_seed<seed>.json` plus
a one-row CSV of the same stem and, optionally, its test predictions
(`..._predictions.npz`) for ROC curves and bootstrap intervals. The report
(`python -m mlvicx_jax.report`) reads every record under one or more run
directories ("run sets") and writes tables in the paper's layouts.

Record schema (version 1), JSON:

  schema_version  1
  task            'nih' | 'vinbig' | 'rsna' | 'siim'
  protocol        'frozen' | 'finetune'
  label_fraction  float in (0, 1]; 1.0 is all labels
  seed            int; runs of two run sets are paired by it
  checkpoint      str (pretrained checkpoint evaluated) or null
  metric_name     'mean_auc' | 'accuracy' | 'dice': the reported metric
  test            {'mean_auc': float, 'per_class_auc': {class: float|null},
                   'accuracy': float, 'dice': float}: those that apply;
                   test[metric_name] is required; null AUC = undefined
                   (single-valued class)
  val             optional, same keys: validation at the best epoch
  best_epoch      int|null: the epoch whose parameters were tested
  stop_epoch      int|null: the epoch early stopping ended training
  ci95            [low, high]|null: bootstrap CI of test[metric_name]
  predictions     file name (same directory) of an npz holding 'labels'
                  and 'scores' (N, K) (classification) or 'per_image_dice'
                  (N,) (segmentation), optional 'class_names'; or null
  name            optional label of what was evaluated ('MLVICX 300 ep',
                  'PCRLv2'); rows of the report are run set + name
  other keys      kept as they are (e.g. 'config')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import collections
import csv
import glob
import io
import json
import math
import os
import re
import warnings

import numpy as np

from mlvicx_jax.evaluate import metrics
from mlvicx_jax.evaluate import paper_results

SCHEMA_VERSION = 1
RECORD_PREFIX = 'run_record_'
PREDICTIONS_SUFFIX = '_predictions.npz'
METRIC_NAMES = ('mean_auc', 'accuracy', 'dice')
METRIC_TITLES = {'mean_auc': 'mean AUC', 'accuracy': 'accuracy',
                 'dice': 'Dice'}
REQUIRED_FIELDS = ('task', 'protocol', 'label_fraction', 'seed', 'checkpoint',
                   'metric_name', 'test')
# Standard deviations over seeds are sample standard deviations.
SD_DDOF = 1
SOURCE_KEY = '_source'  # path a loaded record came from; never written

# --- records -----------------------------------------------------------------


def _finite_or_none(value):
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


def _check_metric_dict(entry, field: str, source: str) -> dict:
  """Validates a `test`/`val` dict; null per-class AUCs become NaN."""
  if not isinstance(entry, Mapping):
    raise ValueError(f'{source}: field {field!r} must be a dict, got '
                     f'{type(entry).__name__}')
  checked = dict(entry)
  for key in METRIC_NAMES:
    if key in checked and checked[key] is not None:
      try:
        checked[key] = float(checked[key])
      except (TypeError, ValueError):
        raise ValueError(f'{source}: field {field}.{key} must be a number, '
                         f'got {checked[key]!r}') from None
  if checked.get('per_class_auc') is not None:
    per_class = checked['per_class_auc']
    if not isinstance(per_class, Mapping):
      raise ValueError(f'{source}: field {field}.per_class_auc must be a dict '
                       'of class name to AUC')
    checked['per_class_auc'] = {
        str(k): float('nan') if v is None else float(v)
        for k, v in per_class.items()}
  return checked


def validate_record(record: Mapping, source: str = 'run record') -> dict:
  """Checks a record against the schema; returns a normalised copy.

  Args:
    record: the record dict.
    source: where it came from, for error messages (a file name).

  Raises:
    ValueError: naming `source` and the offending field.
  """
  if not isinstance(record, Mapping):
    raise ValueError(f'{source}: a run record must be a JSON object')
  missing = [f for f in REQUIRED_FIELDS if f not in record]
  if missing:
    raise ValueError(f'{source}: missing field(s) {missing}')
  out = dict(record)
  version = out.setdefault('schema_version', SCHEMA_VERSION)
  if version != SCHEMA_VERSION:
    raise ValueError(f'{source}: schema_version {version!r} is not '
                     f'{SCHEMA_VERSION}')
  try:
    out['task'] = paper_results.normalize_task(out['task'])
    out['protocol'] = paper_results.normalize_protocol(out['protocol'])
  except ValueError as e:
    raise ValueError(f'{source}: {e}') from None
  try:
    fraction = float(out['label_fraction'])
  except (TypeError, ValueError):
    fraction = float('nan')
  if not 0 < fraction <= 1:
    raise ValueError(f'{source}: field label_fraction must be in (0, 1], got '
                     f'{out["label_fraction"]!r}')
  out['label_fraction'] = fraction
  seed = out['seed']
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise ValueError(f'{source}: field seed must be an integer, got {seed!r}')
  out['seed'] = int(seed)
  if out['checkpoint'] is not None and not isinstance(out['checkpoint'], str):
    raise ValueError(f'{source}: field checkpoint must be a string or null')
  if out['metric_name'] not in METRIC_NAMES:
    raise ValueError(f'{source}: field metric_name must be one of '
                     f'{METRIC_NAMES}, got {out["metric_name"]!r}')
  out['test'] = _check_metric_dict(out['test'], 'test', source)
  value = out['test'].get(out['metric_name'])
  if value is None or not math.isfinite(value):
    raise ValueError(f'{source}: field test.{out["metric_name"]} (the '
                     f'metric_name) must be a finite number, got {value!r}')
  if out.get('val') is not None:
    out['val'] = _check_metric_dict(out['val'], 'val', source)
  for field in ('best_epoch', 'stop_epoch'):
    if out.get(field) is not None:
      if not isinstance(out[field], (int, np.integer)):
        raise ValueError(f'{source}: field {field} must be an integer or '
                         'null')
      out[field] = int(out[field])
  if out.get('ci95') is not None:
    ci = out['ci95']
    if (not isinstance(ci, Sequence) or len(ci) != 2 or
        not all(isinstance(v, (int, float)) for v in ci)):
      raise ValueError(f'{source}: field ci95 must be [low, high], got {ci!r}')
    out['ci95'] = [float(ci[0]), float(ci[1])]
  if out.get('name') is not None and not isinstance(out['name'], str):
    raise ValueError(f'{source}: field name must be a string or null')
  return out


def make_record(task: str, protocol: str, label_fraction: float, seed: int,
                checkpoint: str | None, test: Mapping,
                metric_name: str | None = None, *,
                best_epoch: int | None = None, stop_epoch: int | None = None,
                ci95: Sequence[float] | None = None,
                val: Mapping | None = None, name: str | None = None,
                **extra) -> dict:
  """Builds and validates a run record.

  `metric_name` defaults to the metric the paper reports for `task`
  (mean AUC for NIH and VinBig, accuracy for RSNA, Dice for SIIM).
  `test` is e.g. `metrics.classification_summary(labels, scores, names)`.
  """
  if metric_name is None:
    metric_name = paper_results.PAPER_METRIC[
        paper_results.normalize_task(task)]
  record = dict(schema_version=SCHEMA_VERSION, task=task, protocol=protocol,
                label_fraction=label_fraction, seed=seed,
                checkpoint=checkpoint, metric_name=metric_name,
                test=dict(test), val=None if val is None else dict(val),
                best_epoch=best_epoch, stop_epoch=stop_epoch,
                ci95=None if ci95 is None else list(ci95), name=name,
                predictions=None)
  record.update(extra)
  return validate_record(record, source='make_record')


def _slug(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9.+-]+', '-', str(text)).strip('-') or 'x'


def record_stem(record: Mapping) -> str:
  """File stem of a record: run_record_<task>_<protocol>_f<frac>_seed<seed>."""
  stem = (f'{RECORD_PREFIX}{record["task"]}_{record["protocol"]}_'
          f'f{float(record["label_fraction"]):g}_seed{int(record["seed"])}')
  if record.get('name'):
    stem += f'_{_slug(record["name"])}'
  return stem


def _json_ready(value):
  """NaN -> null (strict JSON), numpy scalars -> python, recursively."""
  if isinstance(value, Mapping):
    return {str(k): _json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_ready(v) for v in value]
  if isinstance(value, np.ndarray):
    return _json_ready(value.tolist())
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return _finite_or_none(value)
  return value


def _atomic_write(path: str, text: str) -> None:
  """Writes via a temporary file so a killed run never leaves half a record."""
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)


def _csv_value(value):
  """Empty cell for missing or undefined (NaN) values."""
  if value is None:
    return ''
  if isinstance(value, (float, np.floating)) and not math.isfinite(value):
    return ''
  return value


def flatten_record(record: Mapping) -> dict:
  """One CSV row: scalars, test metrics, per-class AUCs as test_auc_<class>."""
  test = record.get('test') or {}
  ci = record.get('ci95') or [None, None]
  row = {
      'name': record.get('name') or '',
      'task': record['task'],
      'protocol': record['protocol'],
      'label_fraction': record['label_fraction'],
      'seed': record['seed'],
      'metric_name': record['metric_name'],
      'value': test.get(record['metric_name']),
      'ci95_low': ci[0],
      'ci95_high': ci[1],
      'best_epoch': record.get('best_epoch'),
      'stop_epoch': record.get('stop_epoch'),
      'checkpoint': record.get('checkpoint') or '',
      'predictions': record.get('predictions') or '',
  }
  for key in METRIC_NAMES:
    row[f'test_{key}'] = test.get(key)
  for cls, auc in (test.get('per_class_auc') or {}).items():
    row[f'test_auc_{cls}'] = auc
  return {k: _csv_value(v) for k, v in row.items()}


def _csv_text(rows: Sequence[Mapping]) -> str:
  columns = []
  for row in rows:
    columns += [c for c in row if c not in columns]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, restval='',
                          lineterminator='\n')
  writer.writeheader()
  for row in rows:
    writer.writerow(row)
  return buffer.getvalue()


def write_run_record(out_dir: str, record: Mapping,
                     predictions: Mapping | None = None) -> str:
  """Writes a record as JSON and CSV (and its predictions as npz).

  Args:
    out_dir: directory (created if needed).
    record: a record (see the module docstring; `make_record` builds one).
    predictions: optional {'labels', 'scores'[, 'class_names']} for a
      classifier or {'per_image_dice'} for segmentation; saved next to the
      record and linked from its `predictions` field.

  Returns:
    Path of the JSON file.
  """
  record = validate_record(
      {k: v for k, v in record.items() if not k.startswith('_')},
      source='write_run_record')
  stem = record_stem(record)
  if predictions is not None:
    arrays = {k: np.asarray(v) for k, v in predictions.items()}
    has_cls = 'labels' in arrays and 'scores' in arrays
    if not has_cls and 'per_image_dice' not in arrays:
      raise ValueError('predictions must hold labels and scores, or '
                       f'per_image_dice; got {sorted(arrays)}')
    if has_cls and arrays['labels'].shape != arrays['scores'].shape:
      raise ValueError(f'predictions: labels {arrays["labels"].shape} and '
                       f'scores {arrays["scores"].shape} differ in shape')
    if 'class_names' in arrays:
      arrays['class_names'] = arrays['class_names'].astype(str)
    record['predictions'] = stem + PREDICTIONS_SUFFIX
  os.makedirs(out_dir, exist_ok=True)
  if predictions is not None:
    path = os.path.join(out_dir, record['predictions'])
    tmp = f'{path}.tmp.{os.getpid()}.npz'
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
  json_path = os.path.join(out_dir, stem + '.json')
  _atomic_write(json_path, json.dumps(_json_ready(record), indent=2,
                                      allow_nan=False) + '\n')
  _atomic_write(os.path.join(out_dir, stem + '.csv'),
                _csv_text([flatten_record(record)]))
  return json_path


def _record_files(dir_or_glob: str) -> list[str]:
  pattern = f'{RECORD_PREFIX}*.json'
  if os.path.isdir(dir_or_glob):
    return sorted(glob.glob(os.path.join(dir_or_glob, '**', pattern),
                            recursive=True))
  if os.path.isfile(dir_or_glob):
    return [dir_or_glob]
  files = []
  for match in sorted(glob.glob(dir_or_glob, recursive=True)):
    files += _record_files(match) if os.path.isdir(match) else (
        [match] if match.endswith('.json') else [])
  return files


def load_run_records(dir_or_glob: str) -> list[dict]:
  """Loads every run record under a directory (recursively) or glob.

  Each returned record is validated and carries its file path under
  SOURCE_KEY.

  Raises:
    FileNotFoundError: no records found (names `dir_or_glob`).
    ValueError: a malformed record (names its file).
  """
  is_pattern = any(c in dir_or_glob for c in '*?[')
  if not is_pattern and not os.path.exists(dir_or_glob):
    raise FileNotFoundError(f'run directory {dir_or_glob!r} does not exist')
  files = _record_files(dir_or_glob)
  if not files:
    what = ('directory' if os.path.isdir(dir_or_glob) else
            'path or pattern')
    raise FileNotFoundError(
        f'no run records ({RECORD_PREFIX}*.json) under {what} '
        f'{dir_or_glob!r}; evaluation runs write them into their workdir')
  records = []
  for path in files:
    try:
      with open(path, encoding='utf-8') as f:
        raw = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from None
    record = validate_record(raw, source=path)
    record[SOURCE_KEY] = path
    records.append(record)
  return records


def load_predictions(record: Mapping) -> dict | None:
  """The record's saved predictions as arrays, or None if it has none."""
  name = record.get('predictions')
  if not name:
    return None
  base = os.path.dirname(record.get(SOURCE_KEY, '') or '.')
  path = name if os.path.isabs(name) else os.path.join(base, name)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{record.get(SOURCE_KEY, "record")}: predictions '
                            f'file {path} does not exist')
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


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
  accuracy and mean AUC rows); `paper` is the paper's MLVICX number when the
  paper reports that metric for the task.
  """
  cells = collections.defaultdict(list)
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
  rows = []
  for key in sorted(cells, key=lambda k: (list(run_sets).index(k[0]),) + k):
    run_set, label, task, protocol, metric, fraction = key
    pairs = sorted(cells[key])
    mean, sd = mean_sd([v for _, v in pairs])
    paper = None
    if metric == paper_results.PAPER_METRIC[task]:
      paper = paper_results.paper_reference(task, protocol, fraction)
    rows.append(dict(run_set=run_set, row=label, task=task, protocol=protocol,
                     metric=metric, fraction=fraction, n=len(pairs),
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
  for key in sorted(set(table_a) & set(table_b)):
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
  predictions = load_predictions(record)
  if predictions is None or n_boot <= 0:
    return None, ''
  metric = record['metric_name']
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    if metric == 'dice' and 'per_image_dice' in predictions:
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


# --- markdown ----------------------------------------------------------------

_DASH = '–'


def _fmt(value: float | None, decimals: int) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return _DASH
  return f'{value:.{decimals}f}'


def format_mean_sd(mean: float, sd: float, n: int, decimals: int = 3) -> str:
  text = _fmt(mean, decimals)
  if n > 1:
    text += f' ± {_fmt(sd, decimals)}'
  return f'{text} (n={n})'


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]
                    ) -> list[str]:
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return lines + ['']


def _paper_rows(task: str, protocol: str, fractions: Sequence[float],
                all_methods: bool) -> list[list[str]]:
  methods = paper_results.METHODS if all_methods else (paper_results.OURS,)
  rows = []
  for method in methods:
    cells = [paper_results.paper_reference(task, protocol, f, method)
             for f in fractions]
    if any(c is not None for c in cells):
      rows.append([f'{method} (paper)'] + [_fmt(c, 3) for c in cells])
  return rows


def _classification_section(task, protocol, metric, rows, all_methods,
                            decimals) -> list[str]:
  fractions = sorted({r['fraction'] for r in rows})
  paper_metric = metric == paper_results.PAPER_METRIC[task]
  if paper_metric:
    fractions = sorted(set(fractions) | set(paper_results.FRACTIONS))
    table = paper_results.paper_table_for(task, protocol)
    source = f'paper Table {table}'
  else:
    source = 'not reported in the paper'
  title = (f'## {paper_results.TASK_TITLES[task]}, '
           f'{paper_results.PROTOCOL_TITLES[protocol]}: '
           f'{METRIC_TITLES[metric]} ({source})')
  body = []
  if paper_metric:
    body += _paper_rows(task, protocol, fractions, all_methods)
  for label in dict.fromkeys(r['row'] for r in rows):
    by_fraction = {r['fraction']: r for r in rows if r['row'] == label}
    body.append([f'{label} (reproduced)'] + [
        format_mean_sd(by_fraction[f]['mean'], by_fraction[f]['sd'],
                       by_fraction[f]['n'], decimals)
        if f in by_fraction else _DASH for f in fractions])
  header = ['method'] + [paper_results.format_fraction(f) for f in fractions]
  return [title, ''] + _markdown_table(header, body)


def _segmentation_section(metric, rows, all_methods, decimals) -> list[str]:
  columns = sorted({(r['protocol'], r['fraction']) for r in rows})
  if metric == 'dice':
    columns = sorted(set(columns) | set(paper_results.TABLE_III_COLUMNS))
  columns.sort(key=lambda c: (paper_results.PROTOCOLS.index(c[0]), c[1]))
  body = []
  if metric == 'dice':
    methods = (paper_results.METHODS if all_methods else
               (paper_results.OURS,))
    for method in methods:
      cells = []
      for protocol, fraction in columns:
        if (protocol, fraction) in paper_results.TABLE_III_COLUMNS:
          setting = ('siim', protocol)
          mean = paper_results.paper_value('III', setting, method, fraction)
          sd = paper_results.paper_sd(setting, method, fraction)
          cells.append(f'{mean:.2f} ± {sd:.2f}')
        else:
          cells.append(_DASH)
      body.append([f'{method} (paper)'] + cells)
  for label in dict.fromkeys(r['row'] for r in rows):
    by_column = {(r['protocol'], r['fraction']): r for r in rows
                 if r['row'] == label}
    body.append([f'{label} (reproduced)'] + [
        format_mean_sd(by_column[c]['mean'], by_column[c]['sd'],
                       by_column[c]['n'], decimals)
        if c in by_column else _DASH for c in columns])
  header = ['method'] + [
      f'{paper_results.PROTOCOL_SHORT[p]} {paper_results.format_fraction(f)}'
      for p, f in columns]
  source = 'paper Table III' if metric == 'dice' else 'not in the paper'
  title = (f'## {paper_results.TASK_TITLES["siim"]}: {METRIC_TITLES[metric]} '
           f'({source})')
  return [title, ''] + _markdown_table(header, body)


def _per_class_section(per_class: Mapping, decimals: int) -> list[str]:
  lines = []
  rows = list(dict.fromkeys(label for label, _, _ in per_class))
  order = lambda key: (paper_results.TASKS.index(key[1]),
                       paper_results.PROTOCOLS.index(key[2]),
                       rows.index(key[0]))
  for label, task, protocol in sorted(per_class, key=order):
    classes = per_class[(label, task, protocol)]
    fractions = sorted({f for fracs in classes.values() for f in fracs})
    if not fractions or len(classes) < 2:
      continue  # one class: its AUC is the mean AUC, tabulated above
    lines += [f'### Per-class AUC: {paper_results.TASK_TITLES[task]}, '
              f'{paper_results.PROTOCOL_TITLES[protocol]}, {label}', '']
    body = []
    for cls, fracs in classes.items():
      cells = []
      for f in fractions:
        if f not in fracs:
          cells.append(_DASH)
          continue
        mean, sd, n = fracs[f]
        cells.append(_fmt(mean, decimals) +
                     (f' ± {_fmt(sd, decimals)}' if n > 1 else ''))
      body.append([cls] + cells)
    lines += _markdown_table(
        ['class'] + [paper_results.format_fraction(f) for f in fractions], body)
  if lines:
    lines = ['## Per-class test AUC (mean ± sd over seeds; undefined AUCs '
             'left out)', ''] + lines
  return lines


def _runs_section(run_list, decimals) -> list[str]:
  body = []
  for item in run_list:
    ci = item['ci95']
    ci_text = (f'[{_fmt(ci[0], decimals)}, {_fmt(ci[1], decimals)}]'
               f'{"" if item["ci_source"] == "record" else " (b)"}'
               if ci else _DASH)
    body.append([item['row'], item['task'], item['protocol'],
                 paper_results.format_fraction(item['fraction']),
                 item['seed'], METRIC_TITLES[item['metric']],
                 _fmt(item['value'], decimals), ci_text,
                 _DASH if item['best_epoch'] is None else item['best_epoch'],
                 item['checkpoint'] or _DASH])
  header = ['run', 'task', 'protocol', 'fraction', 'seed', 'metric', 'test',
            '95% CI', 'best epoch', 'checkpoint']
  return (['## Runs', '',
           '95% CIs are bootstrap percentile intervals over test images, as '
           'recorded by the run or, marked (b), computed here from its saved '
           'predictions.', ''] + _markdown_table(header, body))


def _ttest_section(label_a, label_b, tests, decimals) -> list[str]:
  body = []
  for t in tests:
    body.append([t['task'], t['protocol'], METRIC_TITLES[t['metric']],
                 paper_results.format_fraction(t['fraction']), t['n'],
                 _fmt(t.get('mean_a'), decimals),
                 _fmt(t.get('mean_b'), decimals),
                 _fmt(t.get('mean_diff'), decimals),
                 _fmt(t['t'], 3),
                 _DASH if t['p'] is None else f'{t["p"]:.3g}', t['note']])
  header = ['task', 'protocol', 'metric', 'fraction', 'pairs',
            f'mean {label_a}', f'mean {label_b}', 'mean diff', 't', 'p',
            'note']
  sig = paper_results.SIGNIFICANCE
  paper_p = ', '.join(f'{paper_results.format_fraction(f)}: p = {p:.3g}'
                      for f, p in sig['p_values'].items())
  return ([f'## Paired t-tests: {label_a} vs {label_b} (paired by seed, '
           'two-sided)', ''] + _markdown_table(header, body) +
          [f'Paper: MLVICX vs {sig["baseline"]}, '
           f'{paper_results.PROTOCOL_TITLES[sig["protocol"]]}, paired t-test '
           f'over {sig["n_runs"]} runs: {paper_p}.', ''])


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
    records = load_run_records(run_dir)
    check_duplicates(name, records)
    run_sets[name] = records
  os.makedirs(out_dir, exist_ok=True)

  summary = summarize(run_sets)
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
          best_epoch=r.get('best_epoch'), checkpoint=r.get('checkpoint'),
          source=r.get(SOURCE_KEY)))

  lines = ['# mlvicx_jax evaluation report', '']
  for name, run_dir in zip(names, run_dirs):
    lines.append(f'- run set **{name}**: `{run_dir}` '
                 f'({len(run_sets[name])} records)')
  lines += ['', 'Reproduced cells: test metric, mean ± sample sd over seeds '
            f'(ddof={SD_DDOF}), n = number of seeds. Paper cells as printed '
            '(MLVICX, JBHI 2024).', '']
  for task in paper_results.TASKS:
    task_rows = [r for r in summary if r['task'] == task]
    paper_metric = paper_results.PAPER_METRIC[task]
    for metric in (paper_metric,) + tuple(
        m for m in METRIC_NAMES if m != paper_metric):
      metric_rows = [r for r in task_rows if r['metric'] == metric]
      if not metric_rows:
        continue
      if task == 'siim':
        lines += _segmentation_section(metric, metric_rows, all_methods,
                                       decimals)
        continue
      for protocol in paper_results.PROTOCOLS:
        rows = [r for r in metric_rows if r['protocol'] == protocol]
        if rows:
          lines += _classification_section(task, protocol, metric, rows,
                                           all_methods, decimals)
  lines += _per_class_section(per_class, decimals)
  lines += _runs_section(run_list, decimals)

  tests = {}
  first = names[0]
  for other in names[1:]:
    tests[f'{first} vs {other}'] = paired_tests(run_sets[first],
                                                run_sets[other])
    lines += _ttest_section(first, other, tests[f'{first} vs {other}'],
                            decimals)

  plot_paths = []
  if plots:
    plot_paths = _write_plots(plots_lib, run_sets, summary, out_dir)
    if plot_paths:
      lines += ['## Figures', '']
      lines += [f'![{os.path.basename(p)}]({os.path.basename(p)})'
                for p in plot_paths]
      lines.append('')

  md_path = os.path.join(out_dir, 'report.md')
  _atomic_write(md_path, '\n'.join(lines))
  summary_path = os.path.join(out_dir, 'summary.json')
  _atomic_write(summary_path, json.dumps(_json_ready(
      {'run_sets': dict(zip(names, run_dirs)), 'cells': summary,
       'runs': run_list, 'paired_tests': tests}), indent=2,
                                         allow_nan=False) + '\n')
  csv_path = os.path.join(out_dir, 'runs.csv')
  _atomic_write(csv_path, _csv_text(
      [{'run_set': name, **flatten_record(r)}
       for name, records in run_sets.items() for r in records]))
  return {'markdown': md_path, 'summary': summary_path, 'csv': csv_path,
          'plots': plot_paths}


def _write_plots(plots_lib, run_sets, summary, out_dir) -> list[str]:
  paths = []
  # ROC curves: the lowest seed with predictions per row/task/protocol/fraction.
  chosen = {}
  for name, records in run_sets.items():
    for r in sorted(records, key=lambda r: r['seed']):
      key = (row_label(name, r), r['task'], r['protocol'],
             fraction_key(r['label_fraction']))
      if key not in chosen and r.get('predictions'):
        predictions = load_predictions(r)
        if 'scores' in predictions:
          chosen[key] = (r, predictions)
  for (label, task, protocol, fraction), (r, p) in chosen.items():
    names = p.get('class_names')
    if names is None:
      names = list((r['test'].get('per_class_auc') or {}).keys()) or None
    path = os.path.join(out_dir, f'roc_{_slug(label)}_{task}_{protocol}_'
                        f'f{fraction:g}_seed{r["seed"]}.png')
    title = (f'{label}: {paper_results.TASK_TITLES[task]}, '
             f'{paper_results.PROTOCOL_TITLES[protocol]}, '
             f'{paper_results.format_fraction(fraction)}, seed {r["seed"]}')
    paths.append(plots_lib.plot_roc_curves(
        p['labels'], p['scores'],
        None if names is None else [str(n) for n in names], path, title))
  # Metric against label fraction, per task and metric.
  for task in paper_results.TASKS:
    for metric in METRIC_NAMES:
      rows = [r for r in summary if r['task'] == task and r['metric'] == metric]
      if not rows:
        continue
      series = {}
      for label, protocol in dict.fromkeys((r['row'], r['protocol'])
                                           for r in rows):
        cell = [r for r in rows if (r['row'], r['protocol']) == (label,
                                                                 protocol)]
        series[f'{label}, {protocol}'] = ([r['fraction'] for r in cell],
                                          [r['mean'] for r in cell],
                                          [r['sd'] for r in cell])
      paper = {}
      if metric == paper_results.PAPER_METRIC[task]:
        for protocol in dict.fromkeys(r['protocol'] for r in rows):
          points = [(f, paper_results.paper_reference(task, protocol, f))
                    for f in paper_results.FRACTIONS]
          points = [(f, v) for f, v in points if v is not None]
          if points:
            paper[f'{paper_results.OURS} paper, {protocol}'] = (
                [f for f, _ in points], [v for _, v in points])
      path = os.path.join(out_dir, f'{metric}_vs_fraction_{task}.png')
      paths.append(plots_lib.plot_metric_vs_fraction(
          series, path, METRIC_TITLES[metric],
          f'{paper_results.TASK_TITLES[task]}: {METRIC_TITLES[metric]}',
          paper))
  return paths
