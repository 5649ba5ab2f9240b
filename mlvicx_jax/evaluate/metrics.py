"""Model-independent evaluation metrics (pure numpy/scipy).

Everything here takes numpy-compatible arrays of labels and scores that the
evaluation programs have already collected on the host, so the same maths
serves classification (NIH, VinBig-CXR, RSNA), segmentation (SIIM-ACR), the
report and the tests.

Conventions:
  * `labels` are 0/1 and `scores` are any real numbers where larger means
    "more positive" (probabilities or logits; AUC does not care). Accuracy and
    Dice threshold the scores, so pass probabilities with the default 0.5 or
    logits with `threshold=0.0`.
  * A class whose labels hold a single value has no ROC curve; its AUC is NaN
    (with a `SingleValuedClassWarning`) and means skip it (nanmean). This
    happens with small label fractions or small splits (e.g. Hernia in NIH).
  * A NaN label is a masked entry (CheXpert's uncertain labels under the
    'ignore' policy): AUCs, accuracy and the bootstraps leave that row out
    of that class only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import warnings

import numpy as np
from scipy import stats


class SingleValuedClassWarning(UserWarning):
  """A class has only positives or only negatives, so its AUC is undefined."""


def _as_2d(array, name: str) -> np.ndarray:
  """Returns `array` as float64 (N, K); a 1-D input is one class."""
  array = np.asarray(array, dtype=np.float64)
  if array.ndim == 1:
    array = array[:, None]
  if array.ndim != 2:
    raise ValueError(
        f'{name} must have shape (N,) or (N, K), got {array.shape}')
  return array


def _check_labels_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
  labels = _as_2d(labels, 'labels')
  scores = _as_2d(scores, 'scores')
  if labels.shape != scores.shape:
    raise ValueError(
        f'labels {labels.shape} and scores {scores.shape} must have one shape')
  if labels.shape[0] == 0:
    raise ValueError('labels and scores are empty (N = 0)')
  if not np.all((labels == 0) | (labels == 1) | np.isnan(labels)):
    raise ValueError('labels must be 0 or 1 (or NaN: a masked label)')
  if not np.all(np.isfinite(scores)):
    raise ValueError('scores contain NaN or infinite values')
  return labels, scores


def _class_name(class_names: Sequence[str] | None, k: int) -> str:
  return f'{class_names[k]!r}' if class_names is not None else f'#{k}'


def per_class_auc(labels, scores,
                  class_names: Sequence[str] | None = None) -> np.ndarray:
  """ROC AUC of each class, NaN where a class has a single label value.

  Computed as the Mann-Whitney statistic on average ranks, which counts tied
  scores as half a correct ordering and so equals the trapezoidal ROC area
  (scikit-learn's `roc_auc_score`). Rows whose label is NaN (masked) are left
  out of that class.

  Args:
    labels: (N, K) or (N,) array of 0/1 (NaN: masked).
    scores: same shape, real-valued.
    class_names: optional K names, used only in warnings.

  Returns:
    (K,) float64 array.
  """
  labels, scores = _check_labels_scores(labels, scores)
  if class_names is not None and len(class_names) != labels.shape[1]:
    raise ValueError(f'class_names has {len(class_names)} names for '
                     f'{labels.shape[1]} classes')
  labelled = ~np.isnan(labels)
  # Masked rows rank above every labelled one (+inf), so they shift no rank.
  ranks = stats.rankdata(np.where(labelled, scores, np.inf), axis=0)  # average for ties
  positive = labels == 1
  n_pos = positive.sum(axis=0)
  n_neg = labelled.sum(axis=0) - n_pos
  with np.errstate(divide='ignore', invalid='ignore'):
    auc = ((ranks * positive).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (
        n_pos * n_neg)
  for k in np.flatnonzero((n_pos == 0) | (n_neg == 0)):
    count = int(labelled[:, k].sum())
    what = (f'all {count} labels are {int(n_pos[k] > 0)}' if count else
            f'all {labels.shape[0]} labels are masked')
    warnings.warn(
        f'AUC undefined for class {_class_name(class_names, k)}: {what}; '
        'reported as NaN and left out of the mean', SingleValuedClassWarning, stacklevel=2)
    auc[k] = np.nan
  return auc


def _nanmean_or_nan(values: np.ndarray) -> float:
  """nanmean without numpy's all-NaN RuntimeWarning (the NaNs are warned)."""
  values = np.asarray(values, dtype=np.float64)
  finite = values[~np.isnan(values)]
  return float(finite.mean()) if finite.size else float('nan')


def mean_auc(labels, scores,
             class_names: Sequence[str] | None = None) -> float:
  """Mean of `per_class_auc` over the classes where it is defined."""
  return _nanmean_or_nan(per_class_auc(labels, scores, class_names))


def accuracy(labels, scores, threshold: float = 0.5) -> float:
  """Binary accuracy of `scores > threshold` (RSNA pneumonia, paper Table II).

  Args:
    labels: (N,) or (N, 1) array of 0/1.
    scores: same shape; probabilities (threshold 0.5) or logits (0.0).
    threshold: a score strictly above it predicts the positive class.
  """
  labels, scores = _check_labels_scores(labels, scores)
  if labels.shape[1] != 1:
    raise ValueError('accuracy is for one binary output; got '
                     f'{labels.shape[1]} classes')
  keep = ~np.isnan(labels)
  if not keep.any():
    return float('nan')
  return float(np.mean((scores[keep] > threshold) == (labels[keep] == 1)))


def classification_summary(labels, scores,
                           class_names: Sequence[str] | None = None,
                           threshold: float = 0.5) -> dict:
  """The `test` (or `val`) entry of a run record for a classifier.

  Returns {'mean_auc', 'per_class_auc': {name: auc}} and, for one binary
  output (RSNA), 'accuracy' at `threshold`.
  """
  labels, scores = _check_labels_scores(labels, scores)
  if class_names is None:
    class_names = [f'class_{k}' for k in range(labels.shape[1])]
  aucs = per_class_auc(labels, scores, class_names)
  summary = {
      'mean_auc': _nanmean_or_nan(aucs),
      'per_class_auc': {str(n): float(a) for n, a in zip(class_names, aucs)},
  }
  if labels.shape[1] == 1:
    summary['accuracy'] = accuracy(labels, scores, threshold)
  return summary


def _percentile_interval(values: np.ndarray, n_boot: int, n_skipped: int,
                         alpha: float) -> tuple[float, float]:
  if values.size == 0:
    raise ValueError(f'all {n_boot} bootstrap resamples were skipped (a class '
                     'single-valued or the metric NaN in every resample)')
  if n_skipped:
    warnings.warn(f'bootstrap: skipped {n_skipped} of {n_boot} resamples with '
                  'a single-valued class or a NaN metric', stacklevel=3)
  low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
  return float(low), float(high)


def _check_bootstrap_args(n_boot: int, alpha: float) -> None:
  if n_boot < 1:
    raise ValueError(f'n_boot must be >= 1, got {n_boot}')
  if not 0 < alpha < 1:
    raise ValueError(f'alpha must be in (0, 1), got {alpha}')


def bootstrap_ci(labels, scores, metric_fn: Callable[..., float],
                 n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                 skip_single_valued: bool = True) -> tuple[float, float]:
  """Percentile bootstrap (1 - alpha) confidence interval of a metric.

  Images (rows) are resampled with replacement, `metric_fn(labels[idx],
  scores[idx])` is evaluated on each resample, and the alpha/2 and
  1 - alpha/2 percentiles are returned.

  A resample in which a class that has both label values in the full data
  comes out single-valued is skipped rather than scored: its AUC is
  undefined, and scoring it as NaN-and-ignored would change which classes
  the mean covers from one resample to the next. Classes single-valued in
  the full data are ignored by this check (their AUC is NaN everywhere).
  Resamples whose metric is NaN are skipped too. A warning gives the count.

  Args:
    labels: (N, ...) labels; the check above applies to (N,) or (N, K)
      0/1 labels. For masks (Dice) pass skip_single_valued=False.
    scores: (N, ...) scores or predictions.
    metric_fn: (labels, scores) -> float, e.g. `mean_auc`, `accuracy`,
      `dice`.
    n_boot: number of resamples.
    alpha: 0.05 for a 95% interval.
    seed: numpy Generator seed; equal seeds give equal intervals.
    skip_single_valued: apply the single-valued-class check.

  Returns:
    (low, high).
  """
  _check_bootstrap_args(n_boot, alpha)
  labels = np.asarray(labels)
  scores = np.asarray(scores)
  if labels.shape[0] != scores.shape[0]:
    raise ValueError(f'labels ({labels.shape[0]}) and scores '
                     f'({scores.shape[0]}) must have one number of rows')
  n = labels.shape[0]
  checked = None
  if skip_single_valued:
    as_2d = _as_2d(labels, 'labels')
    both = (as_2d == 0).any(axis=0) & (as_2d == 1).any(axis=0)
    checked = as_2d[:, both]
  rng = np.random.default_rng(seed)
  values = []
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', SingleValuedClassWarning)
    for _ in range(n_boot):
      idx = rng.integers(0, n, size=n)
      if checked is not None and checked.shape[1]:
        drawn = checked[idx]
        positives = (drawn == 1).sum(axis=0)
        if np.any(positives == 0) or np.any((drawn == 0).sum(axis=0) == 0):
          continue
      value = float(metric_fn(labels[idx], scores[idx]))
      if not np.isnan(value):
        values.append(value)
  values = np.asarray(values)
  return _percentile_interval(values, n_boot, n_boot - values.size, alpha)


def weighted_mean_auc(labels: np.ndarray, scores: np.ndarray) -> Callable:
  """counts (N,) -> mean AUC of the resample drawing image i counts[i] times.

  Each class's AUC is the weighted Mann-Whitney statistic over the scores
  sorted once, with tied scores counting half; None when a class is
  single-valued in the resample. Only classes with both values in the full
  data are kept (as in `bootstrap_ci`).
  """
  n, _ = labels.shape
  both = (labels == 0).any(axis=0) & (labels == 1).any(axis=0)
  labels, scores = labels[:, both], scores[:, both]
  order = np.argsort(scores, axis=0, kind='stable')
  sorted_scores = np.take_along_axis(scores, order, axis=0)
  sorted_labels = np.take_along_axis(labels, order, axis=0)
  sorted_pos = (sorted_labels == 1).astype(np.float64)  # masked (NaN): neither
  sorted_neg = (sorted_labels == 0).astype(np.float64)
  # For each sorted position, the first and one-past-last position of its
  # block of tied scores.
  positions = np.arange(n)[:, None]
  new_block = np.ones_like(sorted_scores, dtype=bool)
  new_block[1:] = sorted_scores[1:] != sorted_scores[:-1]
  block_start = np.maximum.accumulate(np.where(new_block, positions, 0),
                                      axis=0)
  is_last = np.ones_like(new_block)
  is_last[:-1] = new_block[1:]
  block_end = np.minimum.accumulate(
      np.where(is_last, positions + 1, n)[::-1], axis=0)[::-1]

  def mean_auc_of(counts):
    if not labels.shape[1]:
      return None
    weight = counts[order]
    pos_w = weight * sorted_pos
    neg_w = weight * sorted_neg
    total_pos = pos_w.sum(axis=0)
    total_neg = neg_w.sum(axis=0)
    if np.any(total_pos == 0) or np.any(total_neg == 0):
      return None
    neg_cum = np.concatenate([np.zeros((1, neg_w.shape[1])),
                              np.cumsum(neg_w, axis=0)])
    neg_below = np.take_along_axis(neg_cum, block_start, axis=0)
    neg_tied = np.take_along_axis(neg_cum, block_end, axis=0) - neg_below
    wins = (pos_w * (neg_below + 0.5 * neg_tied)).sum(axis=0)
    return float(np.mean(wins / (total_pos * total_neg)))

  return mean_auc_of


def _resampled(statistic: Callable, n: int, n_boot: int, seed: int) -> np.ndarray:
  """statistic(counts) over n_boot resamples of n images (None results skipped).

  Each resample is one generator draw of n indices, as in `bootstrap_ci`, so
  equal seeds draw the same images whichever statistic is computed.
  """
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(n_boot):
    idx = rng.integers(0, n, size=n)
    value = statistic(np.bincount(idx, minlength=n).astype(np.float64))
    if value is not None:
      values.append(value)
  return np.asarray(values)


def bootstrap_mean_auc_ci(labels, scores, n_boot: int = 1000,
                          alpha: float = 0.05,
                          seed: int = 0) -> tuple[float, float]:
  """`bootstrap_ci(labels, scores, mean_auc, ...)`, about 6x faster.

  Same resamples (same generator calls), same skipping, same result: a
  resample is represented by how many times it draws each image (see
  `weighted_mean_auc`). Use it for NIH-sized test sets (25,596 images x 14
  classes x 1000 resamples).
  """
  _check_bootstrap_args(n_boot, alpha)
  labels, scores = _check_labels_scores(labels, scores)
  n = labels.shape[0]
  mean_auc_of = weighted_mean_auc(labels, scores)
  values = _resampled(mean_auc_of, n, n_boot, seed)
  return _percentile_interval(values, n_boot, n_boot - values.size, alpha)


def paired_bootstrap_mean_auc_diff(labels, scores_a: Sequence, scores_b: Sequence,
                                   n_boot: int = 1000, alpha: float = 0.05,
                                   seed: int = 0) -> dict:
  """Mean AUC of A minus B on the same images, with a paired bootstrap CI.

  `scores_a` and `scores_b` are lists of (N, K) scores of one test set (one
  per seed, say); the statistic is mean over A's lists of mean AUC minus the
  same over B's. Every resample draws the same images for all lists, so the
  interval reflects the test set's sampling, paired. Resamples where a class
  comes out single-valued are skipped, as in `bootstrap_ci`.

  Returns {'diff', 'ci95': (low, high), 'n_boot_used'}.
  """
  _check_bootstrap_args(n_boot, alpha)
  labels = _as_2d(labels, 'labels').astype(np.float64)
  n = labels.shape[0]
  fns_a = [weighted_mean_auc(*_check_labels_scores(labels, s)) for s in scores_a]
  fns_b = [weighted_mean_auc(*_check_labels_scores(labels, s)) for s in scores_b]
  if not fns_a or not fns_b:
    raise ValueError('scores_a and scores_b need at least one score array each')

  def diff(counts):
    a = [f(counts) for f in fns_a]
    b = [f(counts) for f in fns_b]
    if any(v is None for v in a + b):
      return None
    return float(np.mean(a) - np.mean(b))

  full = diff(np.ones(n))
  if full is None:
    raise ValueError('no class has both label values: mean AUC is undefined')
  values = _resampled(diff, n, n_boot, seed)
  low, high = _percentile_interval(values, n_boot, n_boot - values.size, alpha)
  return {'diff': full, 'ci95': (low, high), 'n_boot_used': int(values.size)}


def paired_ttest(a, b) -> tuple[float, float]:
  """Two-sided paired t-test of a - b over matched runs (same seeds).

  The paper compares MLVICX with PCRLv2 this way over 10 runs with random
  label subsets. Returns (t, p) from `scipy.stats.ttest_rel`; t > 0 when
  `a` is larger on average. Identical differences (zero variance) give
  scipy's NaN or infinite t.
  """
  a = np.asarray(a, dtype=np.float64)
  b = np.asarray(b, dtype=np.float64)
  if a.ndim != 1 or b.ndim != 1:
    raise ValueError(f'a and b must be 1-D, got shapes {a.shape} and '
                     f'{b.shape}')
  if a.size != b.size:
    raise ValueError(f'a has {a.size} runs and b has {b.size}; a paired test '
                     'needs one b per a')
  if a.size < 2:
    raise ValueError(f'a paired t-test needs at least 2 pairs, got {a.size}')
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    raise ValueError('a and b must be finite')
  result = stats.ttest_rel(a, b)
  return float(result.statistic), float(result.pvalue)
