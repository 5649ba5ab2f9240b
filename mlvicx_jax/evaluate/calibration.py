"""Calibration and operating points of binary classifiers (pure numpy/scipy).

AUC says how well a model ranks; a clinical read-out also needs probabilities
that mean what they say (ECE, Brier, reliability curves, temperature scaling)
and a threshold chosen on validation data (Youden's J or a target
sensitivity) to report sensitivity, specificity, PPV and NPV on test data.

Conventions follow `metrics`: labels are 0/1 and a NaN label is a masked
entry (CheXpert's uncertain labels under 'ignore'), left out of every
quantity here exactly as `metrics.per_class_auc` leaves it out of the AUC.
Scores must be finite everywhere, masked rows included.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

_STRATEGIES = ('uniform', 'quantile')
_RULES = ('youden', 'sensitivity')
_LOG_TEMPERATURE_BOUNDS = (np.log(1e-2), np.log(1e2))


def _labelled(labels, values, name: str, single_class: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
  """The 1-D (labels, values) of the entries whose label is not NaN."""
  labels = np.asarray(labels, dtype=np.float64)
  values = np.asarray(values, dtype=np.float64)
  if labels.ndim not in (1, 2):
    raise ValueError(f'labels must have shape (N,) or (N, K), got {labels.shape}')
  if labels.shape != values.shape:
    raise ValueError(f'labels {labels.shape} and {name} {values.shape} must '
                     'have one shape')
  if single_class and labels.ndim == 2 and labels.shape[1] != 1:
    raise ValueError(f'labels must be one class, (N,) or (N, 1), got '
                     f'{labels.shape}')
  if not np.all((labels == 0) | (labels == 1) | np.isnan(labels)):
    raise ValueError('labels must be 0 or 1 (or NaN: a masked label)')
  if not np.all(np.isfinite(values)):
    raise ValueError(f'{name} contain NaN or infinite values')
  keep = ~np.isnan(labels)
  return labels[keep], values[keep]


def _labelled_probs(labels, probs) -> tuple[np.ndarray, np.ndarray]:
  labels, probs = _labelled(labels, probs, 'probs')
  if np.any((probs < 0) | (probs > 1)):
    raise ValueError('probs must lie in [0, 1]')
  return labels, probs


def _binned(labels, probs, n_bins: int, strategy: str):
  """(fraction positive, mean prob, count) of each non-empty bin.

  Bins are assigned exactly as `sklearn.calibration.calibration_curve` does:
  each bin is (lo, hi] except the first, [lo, hi], so 0.0 falls in the first
  bin and 1.0 in the last. 'quantile' edges are the percentiles of `probs`;
  a repeated edge (many equal probabilities) leaves an empty bin, which is
  dropped like any other empty bin.
  """
  if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or (
      n_bins < 1):
    raise ValueError(f'n_bins must be a positive integer, got {n_bins!r}')
  if strategy not in _STRATEGIES:
    raise ValueError(f'strategy must be one of {_STRATEGIES}, got {strategy!r}')
  if probs.size == 0:
    empty = np.zeros(0)
    return empty, empty, np.zeros(0, dtype=np.int64)
  if strategy == 'uniform':
    edges = np.linspace(0.0, 1.0, n_bins + 1)
  else:  # percentile of q * 100, as scikit-learn, so edges agree bit for bit
    edges = np.percentile(probs, np.linspace(0.0, 1.0, n_bins + 1) * 100)
  bins = np.searchsorted(edges[1:-1], probs)  # side='left': (lo, hi]
  counts = np.bincount(bins, minlength=n_bins)
  positives = np.bincount(bins, weights=labels, minlength=n_bins)
  prob_sums = np.bincount(bins, weights=probs, minlength=n_bins)
  filled = counts > 0
  counts = counts[filled]
  return positives[filled] / counts, prob_sums[filled] / counts, counts


def reliability_curve(labels, probs, n_bins: int = 15,
                      strategy: str = 'uniform'
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reliability diagram: (fraction_of_positives, mean_predicted, counts).

  One entry per non-empty bin, equal to scikit-learn's `calibration_curve`
  on the same bins, plus the bin sizes it leaves out. 2-D input is pooled
  over all labelled entries, as in `expected_calibration_error`.

  Args:
    labels: (N,) or (N, K) of 0/1 (NaN: masked).
    probs: same shape, probabilities in [0, 1].
    n_bins: number of bins.
    strategy: 'uniform' (equal width on [0, 1]) or 'quantile' (equal mass).
  """
  labels, probs = _labelled_probs(labels, probs)
  return _binned(labels, probs, n_bins, strategy)


def expected_calibration_error(labels, probs, n_bins: int = 15,
                               strategy: str = 'uniform') -> float:
  """ECE: sum over non-empty bins of (n_b / N) |mean(label) - mean(prob)|.

  A 2-D (N, K) input is pooled over every labelled entry of every class (one
  number for a multi-label model); call it on column k for class k's ECE.
  Bins follow `reliability_curve`.

  Returns:
    The ECE in [0, 1]; NaN when every label is masked.
  """
  labels, probs = _labelled_probs(labels, probs)
  if labels.size == 0:
    return float('nan')
  positive_rate, mean_prob, counts = _binned(labels, probs, n_bins, strategy)
  return float(np.sum(counts * np.abs(positive_rate - mean_prob)) / labels.size)


def brier_score(labels, probs) -> float:
  """Mean squared error of the probabilities; NaN when all labels are masked."""
  labels, probs = _labelled_probs(labels, probs)
  if labels.size == 0:
    return float('nan')
  return float(np.mean((probs - labels) ** 2))


def _counts(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
  predicted = scores >= threshold
  positive = labels == 1
  return {'tp': int(np.sum(predicted & positive)),
          'fp': int(np.sum(predicted & ~positive)),
          'tn': int(np.sum(~predicted & ~positive)),
          'fn': int(np.sum(~predicted & positive))}


def _ratio(numerator: int, denominator: int) -> float:
  return numerator / denominator if denominator else float('nan')


def threshold_metrics(labels, scores, threshold: float) -> dict:
  """Confusion counts and rates of `scores >= threshold` on one class.

  Returns:
    {'sensitivity', 'specificity', 'ppv', 'npv', 'f1', 'tp', 'fp', 'tn',
    'fn'}; a rate whose denominator is 0 is NaN (e.g. PPV with no positive
    prediction). Masked (NaN-label) rows are left out.
  """
  labels, scores = _labelled(labels, scores, 'scores', single_class=True)
  c = _counts(labels, scores, threshold)
  tp, fp, tn, fn = c['tp'], c['fp'], c['tn'], c['fn']
  return {'sensitivity': _ratio(tp, tp + fn),
          'specificity': _ratio(tn, tn + fp),
          'ppv': _ratio(tp, tp + fp),
          'npv': _ratio(tn, tn + fn),
          'f1': _ratio(2 * tp, 2 * tp + fp + fn),
          **c}


def operating_point(labels, scores, rule: str = 'youden',
                    target: float = 0.9) -> dict:
  """A decision threshold chosen on (validation) labels and scores.

  The candidates are the distinct scores, i.e. scikit-learn's `roc_curve`
  thresholds without its leading inf ('predict nothing positive'), which is
  never needed: the lowest score reaches sensitivity 1 >= any target, and a
  J of 0 is already reached there. Predictions are positive when
  score >= threshold.

  Args:
    labels: (N,) or (N, 1) of 0/1 (NaN: masked); both values must occur.
    scores: same shape, real-valued.
    rule: 'youden' maximises J = sensitivity + specificity - 1 (ties: the
      highest threshold; J is compared exactly, in integer counts);
      'sensitivity' takes the highest threshold whose sensitivity >= target.
    target: the sensitivity for rule 'sensitivity', in [0, 1].

  Returns:
    {'threshold', 'sensitivity', 'specificity', 'rule', 'target'}; 'target'
    is None for 'youden'.
  """
  if rule not in _RULES:
    raise ValueError(f'rule must be one of {_RULES}, got {rule!r}')
  if rule == 'sensitivity' and not 0 <= target <= 1:
    raise ValueError(f'target must lie in [0, 1], got {target!r}')
  labels, scores = _labelled(labels, scores, 'scores', single_class=True)
  n_pos = int(np.sum(labels == 1))
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f'labels must hold both 0 and 1 after masking; got '
                     f'{n_pos} positives and {n_neg} negatives')
  order = np.argsort(-scores, kind='stable')
  sorted_scores = scores[order]
  tps = np.cumsum(labels[order] == 1)
  fps = np.arange(1, labels.size + 1) - tps
  # The last index of each run of equal scores: counts at threshold = score.
  ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), labels.size - 1]
  thresholds, tps, fps = sorted_scores[ends], tps[ends], fps[ends]
  if rule == 'youden':
    j_scaled = tps * n_neg - fps * n_pos  # J * n_pos * n_neg, exact
    best = int(np.argmax(j_scaled))  # first = highest threshold on ties
  else:
    best = int(np.flatnonzero(tps / n_pos >= target)[0])
  return {'threshold': float(thresholds[best]),
          'sensitivity': float(tps[best] / n_pos),
          'specificity': float((n_neg - fps[best]) / n_neg),
          'rule': rule,
          'target': float(target) if rule == 'sensitivity' else None}


def fit_temperature(labels, logits) -> float:
  """Temperature T > 0 minimising the mean BCE of sigmoid(logits / T).

  Temperature scaling (Guo et al., 2017) for sigmoid outputs: one scalar, so
  the ranking and hence the AUC are unchanged. Fit it on validation logits;
  2-D input is pooled into one T for all classes. The search runs over
  log T in [log 0.01, log 100], so data that one class fills (or logits
  that separate perfectly) end at a bound.
  """
  labels, logits = _labelled(labels, logits, 'logits')
  if labels.size == 0:
    raise ValueError('labels are all masked (NaN); nothing to fit')

  def mean_bce(log_temperature: float) -> float:
    z = logits / np.exp(log_temperature)
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))

  result = optimize.minimize_scalar(mean_bce, bounds=_LOG_TEMPERATURE_BOUNDS,
                                    method='bounded', options={'xatol': 1e-6})
  return float(np.exp(result.x))
