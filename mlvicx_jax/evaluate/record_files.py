"""Run records on disk: JSON and CSV of one run, its predictions, loading a run set;
and transfer records (JSON and predictions; evaluate/transfer.py).

Every write is atomic (a killed run never leaves half a record); one that
fails for lack of space or an I/O error removes its partial file and raises
storage.SaveError in one line. Every record read or written passes `records.validate_record` (or, for a transfer
record, `transfer_record.validate_transfer_record`), the one schema.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import csv
import glob
import io
import contextlib
import json
import math
import os

import numpy as np

from mlvicx_jax import storage

from mlvicx_jax.evaluate.records import (METRIC_NAMES, PREDICTIONS_SUFFIX, RECORD_PREFIX,
                                         SOURCE_KEY, finite_or_none,
                                         record_stem, validate_record)
from mlvicx_jax.evaluate.transfer_record import (TRANSFER_PREFIX, transfer_stem,
                                                 validate_transfer_record)


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
    return finite_or_none(value)
  return value


@contextlib.contextmanager
def storage_errors(path: str, partial: str | None = None):
  """A storage failure while writing `path` removes `partial` (the temporary file) and
  becomes one storage.SaveError; other errors pass unchanged. A half-written model
  folder is left to the re-run, which replaces it (removing it here would race the
  writes Orbax still has in flight)."""
  storage.quiet_save_failures()
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  (OSError, tensorstore's ValueError)
    cause = storage.save_failure_cause(e)
    if cause is None:
      raise
    if partial and os.path.isfile(partial):
      os.remove(partial)
    raise storage.SaveError(
        f'writing {path} failed: {cause}; what is already in {os.path.dirname(path)} is '
        'intact; re-run the same command after freeing space (runs whose record exists are '
        'skipped)') from None


def atomic_write(path: str, text: str) -> None:
  """Writes via a temporary file so a killed run never leaves half a record."""
  tmp = f'{path}.tmp.{os.getpid()}'
  with storage_errors(path, tmp):
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)
    os.replace(tmp, path)


def _atomic_savez(path: str, arrays: Mapping) -> None:
  tmp = f'{path}.tmp.{os.getpid()}.npz'
  with storage_errors(path, tmp):
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def _csv_value(value):
  """Empty cell for missing or undefined (NaN) values."""
  if value is None:
    return ''
  if isinstance(value, (float, np.floating)) and not math.isfinite(value):
    return ''
  return value


def flatten_record(record: Mapping) -> dict:
  """One CSV row: scalars, test metrics, floors, protocol fields, calibration, class AUCs."""
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
  calibration = record.get('calibration') or {}
  pooled = (calibration.get('test') or {}).get('pooled') or {}
  for key in ('ece_uniform', 'ece_quantile', 'brier'):
    row[f'test_{key}'] = pooled.get(key)
  row['temperature'] = (calibration.get('temperature') or {}).get('value')
  row['synthetic_data'] = record.get('synthetic_data')
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
  for prefix in ('', 'val_'):
    labels, scores = arrays.get(f'{prefix}labels'), arrays.get(f'{prefix}scores')
    if prefix and (labels is None) != (scores is None):
      raise ValueError(f'predictions: {prefix}labels and {prefix}scores go together')
    if labels is not None and scores is not None and labels.shape != scores.shape:
      raise ValueError(f'predictions: {prefix}labels {labels.shape} and {prefix}scores '
                       f'{scores.shape} differ in shape')
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
    predictions: optional {'labels', 'scores'[, 'class_names', 'val_labels',
      'val_scores']} for a classifier or
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
    _atomic_savez(os.path.join(out_dir, record['predictions']), arrays)
  json_path = os.path.join(out_dir, stem + '.json')
  atomic_write(json_path, json.dumps(json_ready(record), indent=2, allow_nan=False) + '\n')
  atomic_write(os.path.join(out_dir, stem + '.csv'), csv_text([flatten_record(record)]))
  return json_path


def _record_files(dir_or_glob: str, prefix: str = RECORD_PREFIX) -> list[str]:
  pattern = f'{prefix}*.json'
  if os.path.isdir(dir_or_glob):
    return sorted(glob.glob(os.path.join(dir_or_glob, '**', pattern), recursive=True))
  if os.path.isfile(dir_or_glob):
    return [dir_or_glob]
  files = []
  for match in sorted(glob.glob(dir_or_glob, recursive=True)):
    files += _record_files(match, prefix) if os.path.isdir(match) else (
        [match] if match.endswith('.json') and os.path.basename(match).startswith(prefix)
        else [])
  return files


def _read_json(path: str):
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from None


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
    record = validate_record(_read_json(path), source=path)
    record[SOURCE_KEY] = path
    records.append(record)
  return records


def write_transfer_record(out_dir: str, record: Mapping, predictions: Mapping) -> str:
  """Writes a transfer record (transfer_record.TRANSFER_SPEC) as JSON and its predictions as npz."""
  record = dict(record, predictions=None)
  stem = transfer_stem(validate_transfer_record(record, source='write_transfer_record'))
  os.makedirs(out_dir, exist_ok=True)
  record['predictions'] = stem + PREDICTIONS_SUFFIX
  _atomic_savez(os.path.join(out_dir, record['predictions']),
                {k: np.asarray(v) for k, v in predictions.items()})
  json_path = os.path.join(out_dir, stem + '.json')
  atomic_write(json_path, json.dumps(json_ready(record), indent=2, allow_nan=False) + '\n')
  return json_path


def load_transfer_records(dir_or_glob: str) -> list[dict]:
  """The validated transfer records under a directory or glob ([] when there are none)."""
  records = []
  for path in _record_files(dir_or_glob, TRANSFER_PREFIX):
    record = validate_transfer_record(_read_json(path), source=path)
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
