"""Calibration and operating-point tables of classification runs.

A mean AUC says nothing about whether a probability of 0.8 means 80 %, nor
what a reader gets at a fixed threshold; these tables show both, from the
record fields `calibration` and `operating_points` (schema: evaluate.records)
or, for records written before those fields, from the run's saved
predictions with the same functions the harness uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math

import numpy as np

from mlvicx_jax import vocabulary
from mlvicx_jax.evaluate import calibration_record
from mlvicx_jax.evaluate import record_files
from mlvicx_jax.report import markdown as md
from mlvicx_jax.report import paper_results
from mlvicx_jax.report.summary import fraction_key, mean_sd, row_label

POOLED_ROW = 'pooled (all classes)'
_CAL_COLUMNS = ('ece_uniform', 'ece_quantile', 'brier')
_RATE_TITLES = (('sensitivity', 'sensitivity'), ('specificity', 'specificity'),
                ('ppv', 'PPV'), ('npv', 'NPV'), ('f1', 'F1'))


def class_names_of(record: Mapping, predictions: Mapping) -> list[str]:
  """The class names of saved predictions (their own, the record's AUC keys, or class_k)."""
  names = predictions.get('class_names')
  if names is not None:
    return [str(n) for n in names]
  names = list((record['test'].get('per_class_auc') or {}).keys())
  scores = np.asarray(predictions['scores'])
  k = scores.shape[1] if scores.ndim == 2 else 1
  return names if len(names) == k else [f'class_{i}' for i in range(k)]


def _probabilities(*arrays) -> bool:
  return all(np.all((np.asarray(a) >= 0) & (np.asarray(a) <= 1)) for a in arrays)


def run_calibration(record: Mapping, n_boot: int) -> tuple[dict | None, dict | None]:
  """(calibration, operating_points) of a classification run; None where unknown.

  The record's fields when it has them; otherwise computed from its saved
  predictions with the harness's functions (operating points need saved
  validation scores; calibration needs scores that are probabilities), with
  `n_boot` resamples for the intervals, seeded as the harness seeds them.
  """
  cal, points = record.get('calibration'), record.get('operating_points')
  if (cal is not None and points is not None) or (
      record['task'] not in vocabulary.CLASSIFICATION_TASKS):
    return cal, points
  predictions = record_files.load_predictions(record)
  if predictions is None or 'scores' not in predictions:
    return cal, points
  labels, scores = predictions['labels'], predictions['scores']
  val = None
  if 'val_labels' in predictions:
    val = (predictions['val_labels'], predictions['val_scores'])
  names = class_names_of(record, predictions)
  if cal is None and _probabilities(scores, *(() if val is None else val[1:])):
    cal = {'n_bins': calibration_record.N_BINS, 'temperature': None,
           'test': calibration_record.calibration_summary(labels, scores, names),
           'val': None if val is None else calibration_record.calibration_summary(*val, names)}
  if points is None and val is not None:
    target = (record.get('config') or {}).get('target_sensitivity', 0.9)
    points = calibration_record.operating_points(*val, labels, scores, names, target, n_boot)
  return cal, points


def collect(run_sets: Mapping[str, Sequence[Mapping]], n_boot: int) -> list[dict]:
  """One entry per classification run with calibration or operating points."""
  entries = []
  for name, records in run_sets.items():
    for r in sorted(records, key=lambda r: (r['task'], r['protocol'], r['label_fraction'],
                                            r['seed'])):
      cal, points = run_calibration(r, n_boot)
      if cal is None and points is None:
        continue
      entries.append(dict(run_set=name, row=row_label(name, r), task=r['task'],
                          protocol=r['protocol'], fraction=fraction_key(r['label_fraction']),
                          seed=r['seed'], synthetic=bool(r.get('synthetic_data')),
                          calibration=cal, operating_points=points))
  return entries


def _groups(entries: Sequence[Mapping]) -> dict:
  """(row, task, protocol, fraction) -> entries, in the report's order."""
  rows = list(dict.fromkeys(e['row'] for e in entries))
  groups = {}
  for e in entries:
    groups.setdefault((e['row'], e['task'], e['protocol'], e['fraction']), []).append(e)
  order = lambda key: (vocabulary.TASKS.index(key[1]), vocabulary.PROTOCOLS.index(key[2]),
                       rows.index(key[0]), key[3])
  return {key: groups[key] for key in sorted(groups, key=order)}


def _setting(key) -> str:
  row, task, protocol, fraction = key
  return (f'{paper_results.TASK_TITLES[task]}, {paper_results.PROTOCOL_TITLES[protocol]}, '
          f'{paper_results.format_fraction(fraction)}, {row}')


def _mean_cell(values: Sequence, decimals: int) -> str:
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return md.DASH
  mean, sd = mean_sd(values)
  return md.fmt(mean, decimals) + (f' ± {md.fmt(sd, decimals)}' if len(values) > 1 else '')


def _span(values: Sequence[int]) -> str:
  low, high = min(values), max(values)
  return f'{low:,}' if low == high else f'{low:,}–{high:,}'


def _calibration_table(key, group: Sequence[Mapping], decimals: int) -> list[str]:
  tests = [e['calibration']['test'] for e in group]
  classes = list(dict.fromkeys(c for t in tests for c in t['classes']))
  body = []
  for name in classes + [POOLED_ROW]:
    cells = [t['pooled'] if name == POOLED_ROW else t['classes'].get(name) for t in tests]
    cells = [c for c in cells if c is not None]
    body.append([name] + [_mean_cell([c[m] for c in cells], decimals) for m in _CAL_COLUMNS]
                + [_span([c['n'] for c in cells])])
  n_bins = group[0]['calibration']['n_bins']
  header = ['class', f'ECE ({n_bins} equal-width bins)', f'ECE ({n_bins} equal-mass bins)',
            'Brier', 'labelled test entries']
  seeds = len(group)
  lines = [f'### Calibration: {_setting(key)}{md.synthetic_suffix(group)}', '']
  lines += md.markdown_table(header, body)[:-1]
  lines += ['', f'ECE: |observed positive rate − mean predicted probability| per bin, '
            'weighted by the bin\'s share of entries (0: calibrated); Brier: mean squared '
            f'error of the probability. On {_span([t["n_images"] for t in tests])} test '
            'images, masked labels left out; '
            + (f'mean ± sd over {seeds} seeds.' if seeds > 1 else f'seed {group[0]["seed"]}.')]
  fitted = [e['calibration'].get('temperature') for e in group]
  fitted = [t for t in fitted if t and t.get('value') is not None]
  if fitted:
    before = [t['before']['ece_uniform'] for t in fitted]
    after = [t['after']['ece_uniform'] for t in fitted]
    lines.append(f'Temperature scaling fitted on validation: T = '
                 f'{_mean_cell([t["value"] for t in fitted], decimals)}; pooled test ECE '
                 f'(equal-width) {_mean_cell(before, decimals)} → '
                 f'{_mean_cell(after, decimals)}.')
  return lines + ['']


def calibration_section(entries: Sequence[Mapping], decimals: int) -> list[str]:
  """Per class and pooled ECE (both binnings) and Brier on test, one table per setting."""
  entries = [e for e in entries if e['calibration'] is not None]
  if not entries:
    return []
  lines = [f'## Calibration on the test split{md.synthetic_suffix(entries)}', '']
  for key, group in _groups(entries).items():
    lines += _calibration_table(key, group, decimals)
  return lines


def _interval_cell(point: Mapping, rate: str, decimals: int) -> str:
  text = md.fmt(point[rate], decimals)
  ci = (point.get('ci95') or {}).get(rate)
  if ci is not None and point[rate] is not None:
    text += f' [{md.fmt(ci[0], decimals)}, {md.fmt(ci[1], decimals)}]'
  return text


def _rule_text(rule: str, points: Mapping) -> tuple[str, str]:
  """(short, long) description of a threshold rule."""
  if rule == 'youden':
    return "Youden's J", "maximal Youden's J (sensitivity + specificity − 1)"
  target = points['target_sensitivity']
  return (f'sensitivity ≥ {target:g}',
          f'the highest threshold reaching sensitivity ≥ {target:g}')


def _operating_table(key, entry: Mapping, rule: str, seeds: int, decimals: int) -> list[str]:
  points = entry['operating_points']
  short, long = _rule_text(rule, points)
  body = []
  for name, pair in points['classes'].items():
    if pair is None:
      body.append([name] + [md.DASH] * 7)
      continue
    point = pair[rule]
    labelled = point['tp'] + point['fp'] + point['tn'] + point['fn']
    body.append([name, md.fmt(point['threshold'], decimals)]
                + [_interval_cell(point, rate, decimals) for rate, _ in _RATE_TITLES]
                + [f'{point["tp"] + point["fn"]:,} / {labelled:,}'])
  header = (['class', 'threshold'] + [title for _, title in _RATE_TITLES]
            + ['test positives / labelled'])
  of_seeds = f', seed {entry["seed"]}' + (f' of {seeds}' if seeds > 1 else '')
  lines = [f'### Operating point, {short}: {_setting(key)}{of_seeds}'
           f'{md.synthetic_suffix([entry])}', '']
  lines += md.markdown_table(header, body)[:-1]
  intervals = (f'bootstrap 95% intervals over test images ({points["n_boot"]:,} resamples)'
               if points['n_boot'] else 'no intervals (n_boot 0)')
  lines += ['', f'Threshold per class on the validation split: {long}; test values at it '
            f'(positive when score ≥ threshold) on {points["n_images"]:,} test images, '
            f'masked labels left out, with {intervals}.']
  by_reason = {}
  for name, reason in points['reasons'].items():
    by_reason.setdefault(reason, []).append(name)
  for reason, names in by_reason.items():
    lines.append(f'No threshold for {", ".join(names)} ({reason}).')
  return lines + ['']


def operating_points_section(entries: Sequence[Mapping], decimals: int) -> list[str]:
  """Per class test rates at validation thresholds, both rules, the lowest seed of a setting."""
  entries = [e for e in entries if e['operating_points'] is not None]
  if not entries:
    return []
  lines = [f'## Operating points on the test split (thresholds from validation)'
           f'{md.synthetic_suffix(entries)}', '']
  for key, group in _groups(entries).items():
    first = min(group, key=lambda e: e['seed'])
    for rule in calibration_record.RULES:
      lines += _operating_table(key, first, rule, len(group), decimals)
  return lines
