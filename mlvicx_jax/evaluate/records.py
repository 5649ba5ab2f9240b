"""Run records: the schema every evaluation run writes and the report reads.

Every evaluation run (one task, protocol, label fraction and seed) writes
`run_record_<task>_<protocol>_f<fraction>_seed<seed>.json`, a one-row CSV of the same stem
and, optionally, its test predictions (`..._predictions.npz`) for ROC curves and bootstrap
intervals. The schema lives here alone so that the writer (the harness) and the reader (the
report) cannot drift apart; `record_files` reads and writes the files, validating every
record here.

Record schema (version 1), JSON:

  schema_version  1
  task            'nih' | 'vinbig' | 'rsna' | 'siim' | 'chexpert' | 'padchest'
  protocol        'frozen' | 'finetune'
  label_fraction  float in (0, 1]; 1.0 is all labels
  seed            int; runs of two run sets are paired by it
  checkpoint      str (pretrained checkpoint evaluated) or null
  metric_name     the reported metric: 'mean_auc' (NIH, VinBig), 'accuracy' (RSNA), 'dice'
  test            those that apply of METRIC_NAMES and 'per_class_auc': {class: float|null};
                  test[metric_name] is required; null = undefined (e.g. AUC of a one-valued
                  class). Dice at 0.5: 'dice' global, 2 sum TP / (sum predicted + sum true)
                  over every pixel of the split; 'dice_positive' the mean over images with a
                  non-empty truth; 'dice_per_image' the mean over all, empty on empty = 1
  val             optional, same keys: validation at the best epoch
  best_epoch      int|null: the epoch whose parameters were tested
  stop_epoch      int|null: the epoch early stopping ended training
  ci95            [low, high]|null: bootstrap CI of test[metric_name]
  predictions     npz file name (same directory) holding 'labels' (NaN: masked) and 'scores'
                  (N, K) [+ 'class_names', 'file_names'; 'val_labels' and 'val_scores' (M, K):
                  validation at the best epoch] (classification) or 'dice_counts' (N, 3): per
                  image TP, predicted and true pixels (segmentation; older: 'per_image_dice');
                  or null
  floors          optional {metric: float in [0, 1]|null}: what an all-empty prediction
                  scores on the test split, per Dice (global 0, positive images 0, per image
                  the share of images whose truth is empty)
  val_floors      optional, the same on the validation split
  encoder         optional {'context_blocks': 'keep'|'drop', 'bn_statistics':
                  'checkpoint'|'re-estimated', 'bn_batches': int|null, 'bn_images':
                  int|null, 'random_init': bool}: what the downstream model started from
  label_subset    optional {'mode': 'fixed'|'per_seed', 'seed': int, 'positive_per_class':
                  bool, 'size': int, 'added_for_positives': int}: the labelled images
  selection_metric  optional str: the validation metric early stopping used
  label_policy    optional {'uncertain': 'ignore'|'u_ones'|'u_zeros'|null, 'classes': [str]}:
                  how uncertain labels were read (CheXpert) and which classes were used
  name            optional label of what was evaluated ('MLVICX 300 ep', 'PCRLv2'); rows
                  of the report are run set + name
  synthetic_data  optional bool|null: true when the data was built from mlvicx_jax.synthetic's
                  images (`data.sources.is_synthetic`); the report then shows no paper numbers
                  beside the run and says "(synthetic data)"
  calibration     optional (classification) {'n_bins': int, 'test': CAL, 'val': CAL|null,
                  'temperature': TEMP|null}. CAL = {'n_images': int, 'pooled': CM, 'classes':
                  {class: CM}}; CM = {'ece_uniform', 'ece_quantile', 'brier': float in [0, 1]
                  |null, 'n': int}: ECE over n_bins equal-width / equal-mass bins and Brier
                  score, on the n labelled entries (masked labels left out, as for AUC);
                  'pooled' pools every labelled entry of every class. TEMP = {'value': T > 0|
                  null, 'before': CM, 'after': CM|null, 'reason': str|null}: pooled test
                  calibration before and after a temperature fitted on validation (null T:
                  the reason none was fitted)
  operating_points optional (classification) {'target_sensitivity': float in [0, 1], 'n_boot':
                  int, 'bootstrap_seed': int, 'n_images': int (test rows), 'classes': {class:
                  {'youden': OP, 'sensitivity': OP}|null}, 'reasons': {class: str}}: thresholds
                  chosen per class on validation (Youden's J; the highest threshold reaching
                  the target sensitivity), null with a reason when validation had no scores or
                  the class was single-valued there. OP = {'threshold': float, 'val_sensitivity',
                  'val_specificity': float, 'sensitivity', 'specificity', 'ppv', 'npv', 'f1':
                  float|null (test, at threshold: positive when score >= it), 'tp', 'fp', 'tn',
                  'fn': int (test), 'ci95': {rate: [low, high]|null}|null (bootstrap over test
                  images; null when n_boot is 0)}
  other keys      kept as they are (e.g. 'config')

Transfer records: evaluate/transfer_record.py (the same leaf checks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
import re

import numpy as np

from mlvicx_jax import vocabulary

SCHEMA_VERSION = 1
RECORD_PREFIX = 'run_record_'
PREDICTIONS_SUFFIX = '_predictions.npz'
METRIC_NAMES = ('mean_auc', 'accuracy', 'dice', 'dice_positive', 'dice_per_image')
METRIC_TITLES = {'mean_auc': 'mean AUC', 'accuracy': 'accuracy', 'dice': 'Dice (global)',
                 'dice_positive': 'Dice (positive images)',
                 'dice_per_image': 'Dice (per image)'}
REQUIRED_FIELDS = ('task', 'protocol', 'label_fraction', 'seed', 'checkpoint',
                   'metric_name', 'test')
METHOD_NAMES = vocabulary.METHODS + (vocabulary.RANDOM_INIT,)  # encoder.method
SOURCE_KEY = '_source'  # path a loaded record came from; never written
FLOOR_FIELDS = ('floors', 'val_floors')
# Optional dict fields the report states per run set, so a typo must not pass silently:
# key -> its allowed strings (such a key is required) or a kind of value.
FIELD_SPECS = {
    'encoder': {'context_blocks': ('keep', 'drop'),
                'bn_statistics': ('checkpoint', 're-estimated'),
                'bn_batches': 'int|null', 'bn_images': 'int|null', 'random_init': 'bool',
                'method': 'method|null'},
    'label_subset': {'mode': ('fixed', 'per_seed'), 'seed': 'int', 'positive_per_class': 'bool',
                     'size': 'int', 'added_for_positives': 'int'},
}
_KIND_TEXT = {'bool': 'true or false', 'int': 'an integer', 'int|null': 'an integer or null',
              'method|null': f'one of {METHOD_NAMES} or null'}

# Nested optional fields (calibration, operating points): a dict spec lists required keys,
# ('map', spec) is {name: spec}, ('nullable', spec) also takes null; leaves are kinds of
# _TREE_KINDS. Numbers of kind '...|null' may be NaN (written as null).
_CAL_METRICS = {'ece_uniform': 'unit|null', 'ece_quantile': 'unit|null', 'brier': 'unit|null',
                'n': 'count'}
_CAL_SPLIT = {'n_images': 'count', 'pooled': _CAL_METRICS, 'classes': ('map', _CAL_METRICS)}
OPERATING_RATES = ('sensitivity', 'specificity', 'ppv', 'npv', 'f1')
_OPERATING_POINT = {'threshold': 'number', 'val_sensitivity': 'unit', 'val_specificity': 'unit',
                    **{rate: 'unit|null' for rate in OPERATING_RATES},
                    **{count: 'count' for count in ('tp', 'fp', 'tn', 'fn')},
                    'ci95': ('nullable', {rate: 'interval|null' for rate in OPERATING_RATES})}
TREE_SPECS = {
    'synthetic_data': 'bool|null',
    'calibration': {'n_bins': 'count', 'test': _CAL_SPLIT, 'val': ('nullable', _CAL_SPLIT),
                    'temperature': ('nullable', {
                        'value': 'positive|null', 'before': _CAL_METRICS,
                        'after': ('nullable', _CAL_METRICS), 'reason': 'str|null'})},
    'operating_points': {'target_sensitivity': 'unit', 'n_boot': 'count',
                         'bootstrap_seed': 'int', 'n_images': 'count',
                         'classes': ('map', ('nullable', {'youden': _OPERATING_POINT,
                                                          'sensitivity': _OPERATING_POINT})),
                         'reasons': ('map', 'str')},
}


def finite_or_none(value):
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _spec_ok(value, kind) -> bool:
  if isinstance(kind, tuple):
    return isinstance(value, str) and value in kind
  if kind == 'bool':
    return isinstance(value, (bool, np.bool_))
  if kind == 'method|null':
    return value is None or value in METHOD_NAMES
  return _is_int(value) or (value is None and kind == 'int|null')


def _check_spec_dict(entry, field: str, source: str) -> dict:
  """Validates an `encoder`/`label_subset` dict against FIELD_SPECS."""
  if not isinstance(entry, Mapping):
    raise ValueError(f'{source}: field {field} must be a dict, got {type(entry).__name__}')
  out = dict(entry)
  for key, kind in FIELD_SPECS[field].items():
    if key not in out and not isinstance(kind, tuple):
      continue  # optional key
    if not _spec_ok(out.get(key), kind):
      what = f'one of {kind}' if isinstance(kind, tuple) else _KIND_TEXT[kind]
      raise ValueError(f'{source}: field {field}.{key} must be {what}, got {out.get(key)!r}')
    if out[key] is not None and kind in ('bool', 'int', 'int|null'):
      out[key] = bool(out[key]) if kind == 'bool' else int(out[key])
  return out


def _check_floors(entry, field: str, source: str) -> dict:
  """Validates `floors`/`val_floors`: metric -> Dice in [0, 1] or null (NaN -> null)."""
  if not isinstance(entry, Mapping):
    raise ValueError(f'{source}: field {field} must be a dict of metric to number, got '
                     f'{type(entry).__name__}')
  for key, value in entry.items():
    if key not in METRIC_NAMES:
      raise ValueError(f'{source}: field {field}.{key} is not a metric (one of {METRIC_NAMES})')
    if value is not None and not (_is_number(value) and (math.isnan(value) or 0 <= value <= 1)):
      raise ValueError(f'{source}: field {field}.{key} must be a number in [0, 1] or null, '
                       f'got {value!r}')
  return {k: finite_or_none(v) for k, v in entry.items()}


_TREE_KINDS = {
    'number': ('a finite number', lambda v: _is_number(v) and math.isfinite(v)),
    'unit': ('a number in [0, 1]', lambda v: _is_number(v) and 0 <= v <= 1),
    'unit|null': ('a number in [0, 1] or null',
                  lambda v: v is None or _is_number(v) and (math.isnan(v) or 0 <= v <= 1)),
    'positive|null': ('a positive number or null',
                      lambda v: v is None or _is_number(v) and (math.isnan(v) or v > 0)),
    'count': ('an integer >= 0', lambda v: _is_int(v) and v >= 0),
    'int': ('an integer', _is_int),
    'str': ('a string', lambda v: isinstance(v, str)),
    'str|null': ('a string or null', lambda v: v is None or isinstance(v, str)),
    'bool|null': ('true, false or null', lambda v: v is None or isinstance(v, (bool, np.bool_))),
    'bool': ('true or false', lambda v: isinstance(v, (bool, np.bool_))),
    'number|null': ('a number or null', lambda v: v is None or _is_number(v)),
    'fraction': ('a number in (0, 1]', lambda v: _is_number(v) and 0 < v <= 1),
    'version': (f'{SCHEMA_VERSION}', lambda v: v == SCHEMA_VERSION),
    'transfer': ("'transfer'", lambda v: v == 'transfer'),
    'task': (f'one of {vocabulary.CLASSIFICATION_TASKS}',
             lambda v: v in vocabulary.CLASSIFICATION_TASKS),
    'dataset': (f'one of {vocabulary.DATASETS}', lambda v: v in vocabulary.DATASETS),
    'protocol': (f'one of {vocabulary.PROTOCOLS}', lambda v: v in vocabulary.PROTOCOLS),
    'interval|null': ('[low, high] or null', lambda v: v is None or (
        isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2
        and all(_is_number(x) and math.isfinite(x) for x in v) and v[0] <= v[1])),
}


_STRING_KINDS = ('str', 'str|null', 'transfer', 'task', 'dataset', 'protocol')


def _leaf(value, kind: str):
  """A validated leaf, normalised: python numbers, NaN -> None."""
  if value is None or kind in _STRING_KINDS:
    return value
  if kind in ('bool|null', 'bool'):
    return bool(value)
  if kind in ('count', 'int', 'version'):
    return int(value)
  if kind == 'interval|null':
    return [float(value[0]), float(value[1])]
  return finite_or_none(value)


def check_tree(value, spec, field: str, source: str):
  """Validates a nested field against its spec (TREE_SPECS); returns a normalised copy."""
  if isinstance(spec, tuple) and spec[0] == 'nullable':
    return None if value is None else check_tree(value, spec[1], field, source)
  if isinstance(spec, tuple) or isinstance(spec, dict):
    if not isinstance(value, Mapping):
      raise ValueError(f'{source}: field {field} must be a dict, got {value!r}')
    if isinstance(spec, tuple):  # ('map', spec): any names
      return {str(k): check_tree(v, spec[1], f'{field}.{k}', source) for k, v in value.items()}
    missing = [k for k in spec if k not in value]
    if missing:
      raise ValueError(f'{source}: field {field} lacks {missing}')
    out = dict(value)
    for key, sub in spec.items():
      out[key] = check_tree(value[key], sub, f'{field}.{key}', source)
    return out
  what, ok = _TREE_KINDS[spec]
  if not ok(value):
    raise ValueError(f'{source}: field {field} must be {what}, got {value!r}')
  return _leaf(value, spec)


def _check_metric_dict(entry, field: str, source: str) -> dict:
  """Validates a `test`/`val` dict; null per-class AUCs become NaN."""
  if not isinstance(entry, Mapping):
    raise ValueError(f'{source}: field {field!r} must be a dict, got {type(entry).__name__}')
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
      raise ValueError(f'{source}: field {field}.per_class_auc must be a dict of class name '
                       'to AUC')
    checked['per_class_auc'] = {str(k): float('nan') if v is None else float(v)
                                for k, v in per_class.items()}
  return checked


def validate_record(record: Mapping, source: str = 'run record') -> dict:
  """Checks a record against the schema; returns a normalised copy.

  Raises ValueError naming `source` (where the record came from, e.g. its file) and the
  offending field, so a bad record among hundreds is found at once.
  """
  if not isinstance(record, Mapping):
    raise ValueError(f'{source}: a run record must be a JSON object')
  missing = [f for f in REQUIRED_FIELDS if f not in record]
  if missing:
    raise ValueError(f'{source}: missing field(s) {missing}')
  out = dict(record)
  version = out.setdefault('schema_version', SCHEMA_VERSION)
  if version != SCHEMA_VERSION:
    raise ValueError(f'{source}: schema_version {version!r} is not {SCHEMA_VERSION}')
  try:
    out['task'] = vocabulary.normalize_task(out['task'])
    out['protocol'] = vocabulary.normalize_protocol(out['protocol'])
  except ValueError as e:
    raise ValueError(f'{source}: {e}') from None
  fraction = out['label_fraction']
  if not (_is_number(fraction) and 0 < fraction <= 1):
    raise ValueError(f'{source}: field label_fraction must be in (0, 1], got {fraction!r}')
  out['label_fraction'] = float(fraction)
  for field in ('seed', 'best_epoch', 'stop_epoch'):
    if out.get(field) is not None or field == 'seed':
      if not _is_int(out.get(field)):
        raise ValueError(f'{source}: field {field} must be an integer'
                         f'{"" if field == "seed" else " or null"}, got {out.get(field)!r}')
      out[field] = int(out[field])
  for field in ('checkpoint', 'name', 'selection_metric'):
    if out.get(field) is not None and not isinstance(out[field], str):
      raise ValueError(f'{source}: field {field} must be a string or null, got '
                       f'{out[field]!r}')
  if out['metric_name'] not in METRIC_NAMES:
    raise ValueError(f'{source}: field metric_name must be one of {METRIC_NAMES}, got '
                     f'{out["metric_name"]!r}')
  out['test'] = _check_metric_dict(out['test'], 'test', source)
  value = out['test'].get(out['metric_name'])
  if value is None or not math.isfinite(value):
    raise ValueError(f'{source}: field test.{out["metric_name"]} (the metric_name) must be a '
                     f'finite number, got {value!r}')
  if out.get('val') is not None:
    out['val'] = _check_metric_dict(out['val'], 'val', source)
  ci = out.get('ci95')
  if ci is not None:
    if not (isinstance(ci, Sequence) and len(ci) == 2 and all(_is_number(v) for v in ci)):
      raise ValueError(f'{source}: field ci95 must be [low, high], got {ci!r}')
    out['ci95'] = [float(ci[0]), float(ci[1])]
  for field in FLOOR_FIELDS:
    if out.get(field) is not None:
      out[field] = _check_floors(out[field], field, source)
  for field in FIELD_SPECS:
    if out.get(field) is not None:
      out[field] = _check_spec_dict(out[field], field, source)
  for field, spec in TREE_SPECS.items():
    if out.get(field) is not None:
      out[field] = check_tree(out[field], spec, field, source)
  return out


def make_record(task: str, protocol: str, label_fraction: float, seed: int,
                checkpoint: str | None, test: Mapping, metric_name: str | None = None, *,
                best_epoch: int | None = None, stop_epoch: int | None = None,
                ci95: Sequence[float] | None = None, val: Mapping | None = None,
                name: str | None = None, **extra) -> dict:
  """Builds and validates a run record.

  `metric_name` defaults to the metric the paper reports for `task` (mean AUC for NIH and
  VinBig, accuracy for RSNA, Dice for SIIM). `test` is e.g.
  `metrics.classification_summary(labels, scores, names)`. `extra` holds the optional
  fields (floors, encoder, label_subset, selection_metric, ...).
  """
  if metric_name is None:
    metric_name = vocabulary.TASK_METRIC[vocabulary.normalize_task(task)]
  record = dict(schema_version=SCHEMA_VERSION, task=task, protocol=protocol,
                label_fraction=label_fraction, seed=seed, checkpoint=checkpoint,
                metric_name=metric_name, test=dict(test),
                val=None if val is None else dict(val), best_epoch=best_epoch,
                stop_epoch=stop_epoch, ci95=None if ci95 is None else list(ci95), name=name,
                predictions=None)
  record.update(extra)
  return validate_record(record, source='make_record')


def slug(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9.+-]+', '-', str(text)).strip('-') or 'x'


def file_stem(prefix: str, head: str, record: Mapping) -> str:
  """<prefix><head>_f<frac>_seed<seed>[_<name>]: the file stem of a run's record."""
  stem = f'{prefix}{head}_f{float(record["label_fraction"]):g}_seed{int(record["seed"])}'
  if record.get('name'):
    stem += f'_{slug(record["name"])}'
  return stem


def record_stem(record: Mapping) -> str:
  """File stem of a record: run_record_<task>_<protocol>_f<frac>_seed<seed>[_<name>]."""
  return file_stem(RECORD_PREFIX, f'{record["task"]}_{record["protocol"]}', record)
