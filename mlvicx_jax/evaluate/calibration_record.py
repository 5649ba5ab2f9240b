"""The run record's calibration and operating points (pure numpy).

AUC says how well a classifier ranks; a clinical read-out also needs to know
whether its probabilities mean what they say and how it performs at a
threshold fixed before the test set is seen. These functions turn (labels,
scores) of the validation and test splits into the record fields
`calibration` and `operating_points` (schema: `records`), from the maths in
`calibration`. The harness calls them on a finished run; the report calls
them on saved predictions of records written before these fields existed.

NaN labels are masked entries, left out exactly as the AUC leaves them out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlvicx_jax.evaluate import calibration

N_BINS = 15
RULES = ('youden', 'sensitivity')
RATES = ('sensitivity', 'specificity', 'ppv', 'npv', 'f1')
COUNTS = ('tp', 'fp', 'tn', 'fn')
BOOTSTRAP_SEED = 0  # as the AUC interval (metrics.bootstrap_mean_auc_ci)
LOGIT_EPS = 1e-7    # probabilities are clipped to [eps, 1 - eps] before the logit


def _number(value) -> float | None:
  """A finite float, or None (NaN is undefined and JSON has no NaN)."""
  value = float(value)
  return value if np.isfinite(value) else None


def _as_2d(values) -> np.ndarray:
  values = np.asarray(values, dtype=np.float64)
  return values[:, None] if values.ndim == 1 else values


def calibration_metrics(labels, probs, n_bins: int = N_BINS) -> dict:
  """{'ece_uniform', 'ece_quantile', 'brier', 'n'} of 1-D or pooled 2-D input.

  'n' counts the labelled entries the numbers rest on; with none, the
  three numbers are None.
  """
  labels = np.asarray(labels, dtype=np.float64)
  n = int(np.sum(~np.isnan(labels)))
  return {'ece_uniform': _number(calibration.expected_calibration_error(
              labels, probs, n_bins, 'uniform')),
          'ece_quantile': _number(calibration.expected_calibration_error(
              labels, probs, n_bins, 'quantile')),
          'brier': _number(calibration.brier_score(labels, probs)),
          'n': n}


def calibration_summary(labels, probs, class_names: Sequence[str],
                        n_bins: int = N_BINS) -> dict:
  """One split's calibration: per class and pooled over every labelled entry."""
  labels, probs = _as_2d(labels), _as_2d(probs)
  return {'n_images': int(labels.shape[0]),
          'pooled': calibration_metrics(labels, probs, n_bins),
          'classes': {str(name): calibration_metrics(labels[:, k], probs[:, k], n_bins)
                      for k, name in enumerate(class_names)}}


def logits_of(probs) -> np.ndarray:
  """log(p / (1 - p)) of probabilities clipped away from 0 and 1."""
  p = np.clip(np.asarray(probs, dtype=np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
  return np.log(p) - np.log1p(-p)


def temperature_summary(val_labels, val_probs, test_labels, test_probs,
                        n_bins: int = N_BINS) -> dict:
  """One temperature T fitted on validation; pooled test calibration before and after.

  The logits are those of the stored probabilities (`logits_of`), so T
  rescales exactly what the record's other numbers rest on.
  """
  before = calibration_metrics(test_labels, test_probs, n_bins)
  if val_labels is None:
    return {'value': None, 'before': before, 'after': None,
            'reason': 'no validation scores at a best epoch'}
  if not np.any(~np.isnan(np.asarray(val_labels, dtype=np.float64))):
    return {'value': None, 'before': before, 'after': None,
            'reason': 'every validation label is masked'}
  value = calibration.fit_temperature(val_labels, logits_of(val_probs))
  after_probs = 1 / (1 + np.exp(-logits_of(test_probs) / value))
  return {'value': float(value), 'before': before,
          'after': calibration_metrics(test_labels, after_probs, n_bins), 'reason': None}


def _rates(counts: np.ndarray) -> dict:
  """Rates from (..., 4) tp, fp, tn, fn counts; NaN where a denominator is 0."""
  tp, fp, tn, fn = (counts[..., i] for i in range(4))
  with np.errstate(divide='ignore', invalid='ignore'):
    return {'sensitivity': tp / (tp + fn), 'specificity': tn / (tn + fp),
            'ppv': tp / (tp + fp), 'npv': tn / (tn + fn),
            'f1': 2 * tp / (2 * tp + fp + fn)}


def threshold_intervals(labels, scores, thresholds, n_boot: int,
                        seed: int = BOOTSTRAP_SEED, alpha: float = 0.05
                        ) -> list[dict | None]:
  """Bootstrap (1 - alpha) intervals of the rates at fixed thresholds.

  Test images (rows) are resampled with replacement, one generator draw of
  n indices per resample as in `metrics.bootstrap_ci`, so each resample is
  the same for every class and rule. Each entry of `thresholds` is
  (class index, threshold). A resample where a rate is undefined (its
  denominator is 0, e.g. no positive drawn) is left out of that rate's
  interval; a rate undefined in every resample has interval None. Masked
  (NaN) labels count in no cell.

  Returns:
    One {rate: [low, high] | None} per threshold, or None each if n_boot <= 0.
  """
  if n_boot <= 0 or not thresholds:
    return [None] * len(thresholds)
  labels, scores = _as_2d(labels), _as_2d(scores)
  n = labels.shape[0]
  columns = []
  for k, threshold in thresholds:
    predicted = scores[:, k] >= threshold
    positive, negative = labels[:, k] == 1, labels[:, k] == 0
    columns += [predicted & positive, predicted & negative,
                ~predicted & negative, ~predicted & positive]
  cells = np.stack(columns, axis=1).astype(np.float64)  # (n, 4 * thresholds)
  rng = np.random.default_rng(seed)
  drawn = np.empty((n_boot, cells.shape[1]))
  chunk = max(1, min(n_boot, 2 ** 24 // max(n, 1)))  # weights of a chunk: <= 128 MiB
  for start in range(0, n_boot, chunk):
    stop = min(n_boot, start + chunk)
    weights = np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n)
                        for _ in range(start, stop)]).astype(np.float64)
    drawn[start:stop] = weights @ cells
  rates = _rates(drawn.reshape(n_boot, len(thresholds), 4))
  out = []
  for j in range(len(thresholds)):
    intervals = {}
    for rate in RATES:
      values = rates[rate][:, j]
      values = values[np.isfinite(values)]
      intervals[rate] = (None if not values.size else [float(v) for v in np.percentile(
          values, [100 * alpha / 2, 100 * (1 - alpha / 2)])])
    out.append(intervals)
  return out


def _skip_reason(labels: np.ndarray) -> str | None:
  n_pos = int(np.sum(labels == 1))
  n_neg = int(np.sum(labels == 0))
  if n_pos and n_neg:
    return None
  return (f'single-valued on validation: {n_pos} positives, {n_neg} negatives '
          'after masking')


def operating_points(val_labels, val_scores, test_labels, test_scores,
                     class_names: Sequence[str], target_sensitivity: float = 0.9,
                     n_boot: int = 0, seed: int = BOOTSTRAP_SEED) -> dict:
  """Thresholds chosen on validation per class, tested on test.

  Rules: 'youden' (maximum J on validation) and 'sensitivity' (the highest
  threshold reaching `target_sensitivity` on validation), as in
  `calibration.operating_point`. A class gets None, and a reason, when
  there are no validation scores (val_labels None) or its validation labels
  are single-valued after masking.
  """
  test_labels, test_scores = _as_2d(test_labels), _as_2d(test_scores)
  classes, reasons, chosen = {}, {}, []
  for k, name in enumerate(class_names):
    name = str(name)
    if val_labels is None:
      reason = 'no validation scores at a best epoch'
    else:
      val_y, val_s = _as_2d(val_labels)[:, k], _as_2d(val_scores)[:, k]
      reason = _skip_reason(val_y)
    if reason is not None:
      classes[name], reasons[name] = None, reason
      continue
    classes[name] = {}
    for rule in RULES:
      point = calibration.operating_point(val_y, val_s, rule, target_sensitivity)
      test = calibration.threshold_metrics(test_labels[:, k], test_scores[:, k],
                                           point['threshold'])
      classes[name][rule] = {
          'threshold': point['threshold'],
          'val_sensitivity': point['sensitivity'],
          'val_specificity': point['specificity'],
          **{rate: _number(test[rate]) for rate in RATES},
          **{count: int(test[count]) for count in COUNTS}}
      chosen.append((k, name, rule, point['threshold']))
  intervals = threshold_intervals(test_labels, test_scores,
                                  [(k, t) for k, _, _, t in chosen], n_boot, seed)
  for (_, name, rule, _), ci in zip(chosen, intervals):
    classes[name][rule]['ci95'] = ci
  return {'target_sensitivity': float(target_sensitivity),
          'n_boot': max(int(n_boot), 0), 'bootstrap_seed': int(seed),
          'n_images': int(test_labels.shape[0]), 'classes': classes, 'reasons': reasons}


def record_fields(val_payload, test_labels, test_scores, class_names: Sequence[str], *,
                  target_sensitivity: float = 0.9, n_boot: int = 0,
                  temperature: bool = False, n_bins: int = N_BINS) -> dict:
  """The record's `calibration` and `operating_points` of one classification run.

  Args:
    val_payload: (labels, scores) of validation at the best epoch, or None.
    test_labels, test_scores: (N, K) of the test split (NaN labels: masked).
    class_names: the K class names.
    target_sensitivity: the 'sensitivity' rule's target on validation.
    n_boot: bootstrap resamples of the test rates' intervals (0: none).
    temperature: fit a temperature on validation and record its effect.
  """
  val_labels, val_scores = (None, None) if val_payload is None else val_payload
  cal = {'n_bins': n_bins,
         'test': calibration_summary(test_labels, test_scores, class_names, n_bins),
         'val': (None if val_labels is None else
                 calibration_summary(val_labels, val_scores, class_names, n_bins)),
         'temperature': (temperature_summary(val_labels, val_scores, test_labels,
                                             test_scores, n_bins)
                         if temperature else None)}
  points = operating_points(val_labels, val_scores, test_labels, test_scores, class_names,
                            target_sensitivity, n_boot)
  return {'calibration': cal, 'operating_points': points}
