"""Evaluation maths vs scikit-learn, scipy, closed forms and hand counts."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk_metrics

from mlvicx_jax.evaluate import dice
from mlvicx_jax.evaluate import early_stopping
from mlvicx_jax.evaluate import metrics


def _random_predictions(n, k, seed, positive_rate=0.3, signal=0.4):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, k)) < positive_rate).astype(np.int64)
  # Rounded scores create many ties, which AUC must count as half.
  scores = np.round(rng.random((n, k)) + signal * labels, 1)
  return labels, scores


# --- AUC ---------------------------------------------------------------------


def test_auc_textbook_example():
  # scikit-learn's documented example: AUC 0.75.
  auc = metrics.per_class_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
  assert auc.shape == (1,)
  assert auc[0] == pytest.approx(0.75)


def test_per_class_auc_matches_sklearn_with_ties():
  labels, scores = _random_predictions(200, 6, seed=0)
  expected = [sk_metrics.roc_auc_score(labels[:, k], scores[:, k])
              for k in range(6)]
  np.testing.assert_allclose(metrics.per_class_auc(labels, scores), expected,
                             rtol=0, atol=1e-12)
  assert metrics.mean_auc(labels, scores) == pytest.approx(np.mean(expected))


def test_single_valued_class_is_nan_with_warning_and_left_out_of_mean():
  labels, scores = _random_predictions(50, 4, seed=1)
  labels[:, 1] = 0  # e.g. no Hernia in a 1% subset
  labels[:, 3] = 1
  with pytest.warns(metrics.SingleValuedClassWarning) as record:
    auc = metrics.per_class_auc(labels, scores,
                                class_names=['A', 'Hernia', 'C', 'D'])
  messages = sorted(str(w.message) for w in record)
  assert len(messages) == 2
  assert "'D'" in messages[0] and 'are 1' in messages[0]
  assert "'Hernia'" in messages[1] and 'are 0' in messages[1]
  assert np.isnan(auc[1]) and np.isnan(auc[3])
  expected = [sk_metrics.roc_auc_score(labels[:, k], scores[:, k])
              for k in (0, 2)]
  np.testing.assert_allclose(auc[[0, 2]], expected, atol=1e-12)
  with pytest.warns(metrics.SingleValuedClassWarning):
    assert metrics.mean_auc(labels, scores) == pytest.approx(np.mean(expected))


def test_auc_rejects_bad_input():
  with pytest.raises(ValueError, match='labels must be 0 or 1'):
    metrics.per_class_auc([0, 2], [0.1, 0.2])
  with pytest.raises(ValueError, match='one shape'):
    metrics.per_class_auc(np.zeros((3, 2)), np.zeros((3, 3)))
  with pytest.raises(ValueError, match='NaN'):
    metrics.per_class_auc([0, 1], [0.1, np.nan])


def test_accuracy_hand_count():
  labels = [1, 0, 1, 0, 1]
  probs = [0.9, 0.6, 0.4, 0.1, 0.5]  # 0.5 is not above the threshold
  assert metrics.accuracy(labels, probs) == pytest.approx(2 / 5)
  logits = np.log(np.array(probs) / (1 - np.array(probs)))
  assert metrics.accuracy(np.array(labels)[:, None], logits[:, None],
                          threshold=0.0) == pytest.approx(2 / 5)
  with pytest.raises(ValueError, match='one binary output'):
    metrics.accuracy(np.zeros((3, 2)), np.zeros((3, 2)))


def test_classification_summary():
  labels, scores = _random_predictions(80, 3, seed=2)
  summary = metrics.classification_summary(labels, scores, ['a', 'b', 'c'])
  assert set(summary['per_class_auc']) == {'a', 'b', 'c'}
  assert summary['per_class_auc']['b'] == pytest.approx(
      sk_metrics.roc_auc_score(labels[:, 1], scores[:, 1]))
  assert 'accuracy' not in summary
  binary = metrics.classification_summary(labels[:, :1], scores[:, :1] / 2)
  assert binary['accuracy'] == pytest.approx(
      np.mean((scores[:, 0] / 2 > 0.5) == labels[:, 0]))


# --- paired t-test ------------------------------------------------------------


def test_paired_ttest_closed_form_and_scipy():
  # Differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt(3)).
  t, p = metrics.paired_ttest([3.0, 5.0, 7.0], [2.0, 3.0, 4.0])
  assert t == pytest.approx(2 * math.sqrt(3))
  assert p == pytest.approx(2 * stats.t.sf(2 * math.sqrt(3), df=2))

  a = [0.642, 0.650, 0.637, 0.645, 0.639]
  b = [0.630, 0.641, 0.628, 0.633, 0.637]
  diffs = np.subtract(a, b)
  t_closed = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(len(diffs)))
  reference = stats.ttest_rel(a, b)
  t, p = metrics.paired_ttest(a, b)
  assert t == pytest.approx(t_closed)
  assert t == pytest.approx(reference.statistic)
  assert p == pytest.approx(reference.pvalue)
  assert metrics.paired_ttest(b, a)[0] == pytest.approx(-t)


def test_paired_ttest_validates_lengths():
  with pytest.raises(ValueError, match='one b per a'):
    metrics.paired_ttest([1.0, 2.0, 3.0], [1.0, 2.0])
  with pytest.raises(ValueError, match='at least 2'):
    metrics.paired_ttest([1.0], [2.0])
  with pytest.raises(ValueError, match='1-D'):
    metrics.paired_ttest(np.zeros((2, 2)), np.zeros((2, 2)))


# --- bootstrap ---------------------------------------------------------------


def _ci_width(n, seed):
  labels, scores = _random_predictions(n, 3, seed=seed)
  point = metrics.mean_auc(labels, scores)
  low, high = metrics.bootstrap_ci(labels, scores, metrics.mean_auc,
                                   n_boot=200, seed=0)
  assert low <= point <= high
  return high - low


def test_bootstrap_ci_contains_point_and_shrinks_with_n():
  small, large = _ci_width(60, seed=3), _ci_width(1500, seed=3)
  # Width scales like 1/sqrt(N): 25x the data, about 1/5 of the width.
  assert large < small / 2.5


def test_bootstrap_ci_is_reproducible_and_tracks_alpha():
  labels, scores = _random_predictions(100, 2, seed=4)
  ci95 = metrics.bootstrap_ci(labels, scores, metrics.mean_auc, n_boot=100)
  assert ci95 == metrics.bootstrap_ci(labels, scores, metrics.mean_auc,
                                      n_boot=100)
  ci50 = metrics.bootstrap_ci(labels, scores, metrics.mean_auc, n_boot=100,
                              alpha=0.5)
  assert ci95[0] <= ci50[0] <= ci50[1] <= ci95[1]


def test_bootstrap_percentiles_match_manual_resampling():
  labels, scores = _random_predictions(40, 1, seed=5, positive_rate=0.5)
  rng = np.random.default_rng(7)
  values = []
  for _ in range(50):
    idx = rng.integers(0, 40, size=40)
    if 0 < labels[idx].sum() < 40:
      values.append(sk_metrics.roc_auc_score(labels[idx, 0], scores[idx, 0]))
  expected = np.percentile(values, [2.5, 97.5])
  got = metrics.bootstrap_ci(labels, scores, metrics.mean_auc, n_boot=50,
                             seed=7)
  np.testing.assert_allclose(got, expected, atol=1e-12)


def test_bootstrap_skips_resamples_with_single_valued_class():
  labels, scores = _random_predictions(20, 2, seed=6)
  labels[:, 1] = 0
  labels[3, 1] = 1  # a rare class: 1 positive in 20, often missed
  calls = []

  def metric(y, s):
    calls.append(y[:, 1].sum())
    return metrics.mean_auc(y, s)

  with pytest.warns(UserWarning, match='skipped'):
    metrics.bootstrap_ci(labels, scores, metric, n_boot=100)
  assert calls and min(calls) >= 1  # never scored without the positive
  assert len(calls) < 100


def test_fast_mean_auc_bootstrap_equals_generic():
  labels, scores = _random_predictions(150, 4, seed=8, positive_rate=0.1)
  labels[:, 2] = 0  # single-valued everywhere: ignored by both
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    generic = metrics.bootstrap_ci(labels, scores, metrics.mean_auc,
                                   n_boot=120, seed=3)
    fast = metrics.bootstrap_mean_auc_ci(labels, scores, n_boot=120, seed=3)
  np.testing.assert_allclose(fast, generic, rtol=0, atol=1e-12)


def test_bootstrap_global_dice_over_images():
  rng = np.random.default_rng(9)
  true = rng.random((30, 4, 4)) < 0.3
  pred = np.where(rng.random((30, 4, 4)) < 0.8, true, ~true).astype(float)
  counts = dice.dice_counts(pred, true)
  global_dice = lambda _, c: dice.dice_summary(c)['dice']
  low, high = metrics.bootstrap_ci(counts, counts, global_dice, n_boot=100,
                                   skip_single_valued=False)
  direct = 2 * np.sum((pred > 0.5) & true) / (np.sum(pred > 0.5) + np.sum(true))
  assert low <= direct <= high and high - low > 0.01


def test_paired_bootstrap_margin_against_a_sklearn_loop():
  rng = np.random.default_rng(4)
  labels = (rng.random((60, 3)) < 0.4).astype(float)
  a = [labels + rng.normal(0, s, labels.shape) for s in (0.6, 0.7)]
  b = [labels + rng.normal(0, 2.0, labels.shape) for _ in range(2)]
  out = metrics.paired_bootstrap_mean_auc_diff(labels, a, b, n_boot=40, seed=5)
  mean_auc = lambda y, s: np.mean([sk_metrics.roc_auc_score(y[:, k], s[:, k])
                                   for k in range(y.shape[1])])
  assert out['diff'] == pytest.approx(np.mean([mean_auc(labels, s) for s in a]) -
                                      np.mean([mean_auc(labels, s) for s in b]))
  # The same resamples (one generator draw of N indices each), scored with sklearn.
  gen, values = np.random.default_rng(5), []
  for _ in range(40):
    idx = gen.integers(0, 60, size=60)
    y = labels[idx]
    if np.any(y.sum(axis=0) == 0) or np.any(y.sum(axis=0) == 60):
      continue
    values.append(np.mean([mean_auc(y, s[idx]) for s in a]) -
                  np.mean([mean_auc(y, s[idx]) for s in b]))
  assert out['n_boot_used'] == len(values)
  np.testing.assert_allclose(out['ci95'], np.percentile(values, [2.5, 97.5]), atol=1e-12)
  assert out['ci95'][0] > 0  # A is clearly better


# --- early stopping ----------------------------------------------------------


def test_early_stopping_picks_best_epoch_and_respects_patience():
  curve = [0.50, 0.60, 0.70, 0.65, 0.70, 0.68, 0.90]
  # Patience 3: epoch 2 is best (the later 0.70 is a tie, not better); epochs
  # 3, 4, 5 do not improve, so training stops at 5 and never sees 0.90.
  stopper = early_stopping.EarlyStopping(patience=3)
  decisions = [stopper.update(epoch, v) for epoch, v in enumerate(curve[:6])]
  assert decisions == [False] * 5 + [True]
  assert (stopper.best_epoch, stopper.best_value) == (2, 0.70)
  assert early_stopping.find_stop_point(curve, patience=3) == (2, 5)
  # Patience 4 reaches the 0.90 at epoch 6 and never stops.
  assert early_stopping.find_stop_point(curve, patience=4) == (6, 6)
  # Epoch numbering from 1.
  assert early_stopping.find_stop_point(curve, patience=3,
                                        first_epoch=1) == (3, 6)


def test_early_stopping_improved_flag_min_mode_and_nan():
  stopper = early_stopping.EarlyStopping(patience=2, mode='min')
  stopper.update(0, float('nan'))
  assert not stopper.improved and stopper.best_epoch is None
  stopper.update(1, 1.0)
  assert stopper.improved and stopper.best_epoch == 1
  stopper.update(2, 0.5)
  assert stopper.improved and stopper.best_value == 0.5
  assert not stopper.update(3, 0.7)
  assert stopper.update(4, 0.5)  # equal is not better
  assert stopper.best_epoch == 2


def test_early_stopping_min_delta_and_validation():
  point = early_stopping.find_stop_point([0.5, 0.505, 0.52], patience=5,
                                         min_delta=0.01)
  assert point.best_epoch == 2 and point.stop_epoch == 2
  with pytest.raises(ValueError, match='mode'):
    early_stopping.EarlyStopping(mode='maximum')
  with pytest.raises(ValueError, match='patience'):
    early_stopping.EarlyStopping(patience=0)
  with pytest.raises(ValueError, match='empty'):
    early_stopping.find_stop_point([])
