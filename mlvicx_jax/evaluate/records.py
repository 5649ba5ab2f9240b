"""Run records: the schema every evaluation run writes and the report reads.

Every evaluation run (one task, protocol, label fraction and seed) writes
`run_record_<task>_<protocol>_f<fraction>_seed<seed>.json`, a one-row CSV of the same stem
and, optionally, its test predictions (`..._predictions.npz`) for ROC curves and bootstrap
intervals. The schema lives here alone so that the writer (the harness) and the reader (the
report) cannot drift apart.

Record schema (version 1), JSON:

  schema_version  1
  task            'nih' | 'vinbig' | 'rsna' | 'siim' | 'chexpert'
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
                  (N, K) [+ 'class_names'] (classification) or 'dice_counts' (N, 3): per image
                  TP, predicted and true pixels (segmentation; older: 'per_image_dice'); or null
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
  other keys      kept as they are (e.g. 'config')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import csv
import glob
import io
import json
import math
import os
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


def _finite_or_none(value):
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
  return {k: _finite_or_none(v) for k, v in entry.items()}


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


def record_stem(record: Mapping) -> str:
  """File stem of a record: run_record_<task>_<protocol>_f<frac>_seed<seed>[_<name>]."""
  stem = (f'{RECORD_PREFIX}{record["task"]}_{record["protocol"]}_'
          f'f{float(record["label_fraction"]):g}_seed{int(record["seed"])}')
  if record.get('name'):
    stem += f'_{slug(record["name"])}'
  return stem


def json_ready(value):
  """NaN -> null (strict JSON), numpy scalars -> python, recursively."""
  if isinstance(value, Mapping):
    return {str(k): json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_ready(v) for v in value]
  if isinstance(value, np.ndarray):
    return json_ready(value.tolist())
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return _finite_or_none(value)
  return value


def atomic_write(path: str, text: str) -> None:
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
  """One CSV row: scalars, test metrics, floors, protocol fields, per-class test AUCs."""
  test = record.get('test') or {}
  encoder = record.get('encoder') or {}
  ci = record.get('ci95') or [None, None]
  row = dict(name=record.get('name') or '', task=record['task'], protocol=record['protocol'],
             label_fraction=record['label_fraction'], seed=record['seed'],
             metric_name=record['metric_name'], value=test.get(record['metric_name']),
             ci95_low=ci[0], ci95_high=ci[1], best_epoch=record.get('best_epoch'),
             stop_epoch=record.get('stop_epoch'), checkpoint=record.get('checkpoint') or '',
             predictions=record.get('predictions') or '')
  for key in METRIC_NAMES:
    row[f'test_{key}'] = test.get(key)
  for key, floor in (record.get('floors') or {}).items():
    row[f'floor_{key}'] = floor
  row.update(encoder_context_blocks=encoder.get('context_blocks'),
             encoder_bn_statistics=encoder.get('bn_statistics'),
             encoder_method=encoder.get('method'),
             label_subset_mode=(record.get('label_subset') or {}).get('mode'),
             selection_metric=record.get('selection_metric'),
             uncertain=(record.get('label_policy') or {}).get('uncertain'))
  for cls, auc in (test.get('per_class_auc') or {}).items():
    row[f'test_auc_{cls}'] = auc
  return {k: _csv_value(v) for k, v in row.items()}


def csv_text(rows: Sequence[Mapping]) -> str:
  """CSV of rows whose columns may differ (the union, in first-seen order)."""
  columns = []
  for row in rows:
    columns += [c for c in row if c not in columns]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, restval='', lineterminator='\n')
  writer.writeheader()
  for row in rows:
    writer.writerow(row)
  return buffer.getvalue()


def _check_predictions(predictions: Mapping) -> dict:
  arrays = {k: np.asarray(v) for k, v in predictions.items()}
  has_cls = 'labels' in arrays and 'scores' in arrays
  if not has_cls and not {'dice_counts', 'per_image_dice'} & set(arrays):
    raise ValueError(f'predictions must hold labels and scores, or dice_counts; got '
                     f'{sorted(arrays)}')
  if has_cls and arrays['labels'].shape != arrays['scores'].shape:
    raise ValueError(f'predictions: labels {arrays["labels"].shape} and scores '
                     f'{arrays["scores"].shape} differ in shape')
  counts = arrays.get('dice_counts')
  if counts is not None and (counts.ndim != 2 or counts.shape[1] != 3):
    raise ValueError(f'predictions: dice_counts must be (N, 3), got {counts.shape}')
  if 'class_names' in arrays:
    arrays['class_names'] = arrays['class_names'].astype(str)
  return arrays


def write_run_record(out_dir: str, record: Mapping, predictions: Mapping | None = None) -> str:
  """Writes a record as JSON and CSV (and its predictions as npz).

  Args:
    out_dir: directory (created if needed).
    record: a record (see the module docstring; `make_record` builds one).
    predictions: optional {'labels', 'scores'[, 'class_names']} for a classifier or
      {'dice_counts'} (N, 3) for segmentation, other arrays kept; saved next to the record
      and linked from its `predictions` field.

  Returns:
    Path of the JSON file.
  """
  record = validate_record({k: v for k, v in record.items() if not k.startswith('_')},
                           source='write_run_record')
  stem = record_stem(record)
  os.makedirs(out_dir, exist_ok=True)
  if predictions is not None:
    arrays = _check_predictions(predictions)
    record['predictions'] = stem + PREDICTIONS_SUFFIX
    path = os.path.join(out_dir, record['predictions'])
    tmp = f'{path}.tmp.{os.getpid()}.npz'
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
  json_path = os.path.join(out_dir, stem + '.json')
  atomic_write(json_path, json.dumps(json_ready(record), indent=2, allow_nan=False) + '\n')
  atomic_write(os.path.join(out_dir, stem + '.csv'), csv_text([flatten_record(record)]))
  return json_path


def _record_files(dir_or_glob: str) -> list[str]:
  pattern = f'{RECORD_PREFIX}*.json'
  if os.path.isdir(dir_or_glob):
    return sorted(glob.glob(os.path.join(dir_or_glob, '**', pattern), recursive=True))
  if os.path.isfile(dir_or_glob):
    return [dir_or_glob]
  files = []
  for match in sorted(glob.glob(dir_or_glob, recursive=True)):
    files += _record_files(match) if os.path.isdir(match) else (
        [match] if match.endswith('.json') else [])
  return files


def load_run_records(dir_or_glob: str) -> list[dict]:
  """Loads every run record under a directory (recursively) or glob.

  Each returned record is validated and carries its file path under SOURCE_KEY.

  Raises:
    FileNotFoundError: no records found (names `dir_or_glob`).
    ValueError: a malformed record (names its file).
  """
  is_pattern = any(c in dir_or_glob for c in '*?[')
  if not is_pattern and not os.path.exists(dir_or_glob):
    raise FileNotFoundError(f'run directory {dir_or_glob!r} does not exist')
  files = _record_files(dir_or_glob)
  if not files:
    what = 'directory' if os.path.isdir(dir_or_glob) else 'path or pattern'
    raise FileNotFoundError(f'no run records ({RECORD_PREFIX}*.json) under {what} '
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
    raise FileNotFoundError(f'{record.get(SOURCE_KEY, "record")}: predictions file {path} '
                            'does not exist')
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}
