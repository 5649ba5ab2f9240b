"""Calibration and operating points vs scikit-learn, brute force and hand counts."""

import numpy as np
import pytest
from sklearn import calibration as sk_calibration
from sklearn import metrics as sk_metrics

from mlvicx_jax.evaluate import calibration


def _random_binary(n, seed, skew=2.0):
  """Miscalibrated probabilities: labels ~ Bernoulli(p), reported p ** (1/skew)."""
  rng = np.random.default_rng(seed)
  p = rng.random(n)
  labels = (rng.random(n) < p).astype(np.float64)
  return labels, p ** (1 / skew)


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


# --- reliability curve and ECE -----------------------------------------------


@pytest.mark.parametrize('strategy, n_bins', [('uniform', 15), ('quantile', 10)])
def test_reliability_curve_and_ece_match_sklearn(strategy, n_bins):
  labels, probs = _random_binary(1000, seed=0)
  sk_true, sk_pred = sk_calibration.calibration_curve(
      labels, probs, n_bins=n_bins, strategy=strategy)
  edges = (np.linspace(0, 1, n_bins + 1) if strategy == 'uniform' else
           np.percentile(probs, np.linspace(0, 1, n_bins + 1) * 100))
  sk_counts, _ = np.histogram(probs, bins=edges)
  sk_counts = sk_counts[sk_counts > 0]
  expected_ece = np.sum(sk_counts * np.abs(sk_true - sk_pred)) / probs.size

  fraction, mean_pred, counts = calibration.reliability_curve(
      labels, probs, n_bins=n_bins, strategy=strategy)
  np.testing.assert_allclose(fraction, sk_true, rtol=0, atol=1e-12)
  np.testing.assert_allclose(mean_pred, sk_pred, rtol=0, atol=1e-12)
  np.testing.assert_array_equal(counts, sk_counts)
  ece = calibration.expected_calibration_error(labels, probs, n_bins, strategy)
  assert ece == pytest.approx(expected_ece, abs=1e-12)
  assert ece > 0.02  # the skew is visible, so the test would see a zero ECE


@pytest.mark.parametrize('strategy', ['uniform', 'quantile'])
def test_reliability_curve_on_bin_edges_and_repeats_matches_sklearn(strategy):
  # Probabilities on the uniform edges (0, 0.1, ..., 1) and many repeats,
  # which give repeated quantile edges.
  rng = np.random.default_rng(1)
  probs = rng.choice([0.0, 0.0, 0.0, 0.1, 0.5, 0.7, 1.0, 1.0], 300)
  labels = (rng.random(300) < probs).astype(np.float64)
  sk_true, sk_pred = sk_calibration.calibration_curve(
      labels, probs, n_bins=10, strategy=strategy)
  fraction, mean_pred, counts = calibration.reliability_curve(
      labels, probs, n_bins=10, strategy=strategy)
  np.testing.assert_allclose(fraction, sk_true, rtol=0, atol=1e-12)
  np.testing.assert_allclose(mean_pred, sk_pred, rtol=0, atol=1e-12)
  assert counts.sum() == 300


def test_uniform_bins_hand_counted():
  # Bins (lo, hi] with the first closed: 0.0 and 0.5 in bin 1, 1.0 in bin 2.
  fraction, mean_pred, counts = calibration.reliability_curve(
      [0, 1, 1, 1], [0.0, 0.5, 0.75, 1.0], n_bins=2)
  np.testing.assert_allclose(fraction, [0.5, 1.0])
  np.testing.assert_allclose(mean_pred, [0.25, 0.875])
  np.testing.assert_array_equal(counts, [2, 2])
  # ECE = 2/4 * |0.5 - 0.25| + 2/4 * |1 - 0.875| = 0.1875
  assert calibration.expected_calibration_error(
      [0, 1, 1, 1], [0.0, 0.5, 0.75, 1.0], n_bins=2) == pytest.approx(0.1875)


def test_brier_matches_sklearn():
  labels, probs = _random_binary(500, seed=2)
  assert calibration.brier_score(labels, probs) == pytest.approx(
      sk_metrics.brier_score_loss(labels, probs), abs=1e-12)


def test_nan_labels_are_masked():
  labels, probs = _random_binary(400, seed=3)
  masked = labels.copy()
  masked[::7] = np.nan
  keep = ~np.isnan(masked)
  for strategy in ('uniform', 'quantile'):
    assert calibration.expected_calibration_error(
        masked, probs, strategy=strategy) == pytest.approx(
            calibration.expected_calibration_error(
                labels[keep], probs[keep], strategy=strategy), abs=1e-15)
  assert calibration.brier_score(masked, probs) == pytest.approx(
      sk_metrics.brier_score_loss(labels[keep], probs[keep]), abs=1e-12)
  assert np.isnan(calibration.brier_score([np.nan, np.nan], [0.2, 0.3]))


def test_two_d_pools_the_labelled_entries():
  rng = np.random.default_rng(4)
  labels, probs = _random_binary(600, seed=4)
  labels, probs = labels.reshape(200, 3), probs.reshape(200, 3)
  labels[rng.random((200, 3)) < 0.1] = np.nan
  keep = ~np.isnan(labels)
  for strategy in ('uniform', 'quantile'):
    pooled = calibration.expected_calibration_error(labels, probs,
                                                    strategy=strategy)
    flat = calibration.expected_calibration_error(labels[keep], probs[keep],
                                                  strategy=strategy)
    assert pooled == pytest.approx(flat, abs=1e-15)
    # Pooling differs from the mean of the per-column values.
    per_column = [calibration.expected_calibration_error(
        labels[:, k], probs[:, k], strategy=strategy) for k in range(3)]
    assert pooled != pytest.approx(np.mean(per_column), abs=1e-6)


@pytest.mark.parametrize('probs', [[0.2, 1.2], [0.2, np.nan]])
def test_bad_probs_raise(probs):
  with pytest.raises(ValueError, match='probs'):
    calibration.expected_calibration_error([0, 1], probs)


# --- operating point ---------------------------------------------------------


def _brute_force_youden(labels, scores):
  fpr, tpr, thresholds = sk_metrics.roc_curve(labels, scores)
  n_pos = int(np.sum(labels == 1))
  n_neg = labels.size - n_pos
  best = None
  for f, t, threshold in zip(fpr, tpr, thresholds):
    if not np.isfinite(threshold):
      continue
    j = round(t * n_pos) * n_neg - round(f * n_neg) * n_pos  # exact J * P * N
    if best is None or j > best[0] or (j == best[0] and threshold > best[1]):
      best = (j, threshold, t, 1 - f)
  return best[1:]


@pytest.mark.parametrize('seed', range(5))
def test_youden_matches_brute_force_over_roc_thresholds(seed):
  rng = np.random.default_rng(seed)
  labels = (rng.random(300) < 0.3).astype(np.float64)
  scores = np.round(rng.random(300) + 0.5 * labels, 1)  # many ties
  threshold, sensitivity, specificity = _brute_force_youden(labels, scores)
  point = calibration.operating_point(labels, scores, rule='youden')
  assert point['threshold'] == threshold
  assert point['sensitivity'] == pytest.approx(sensitivity)
  assert point['specificity'] == pytest.approx(specificity)
  assert point['rule'] == 'youden'


def test_youden_tie_takes_the_highest_threshold():
  # Thresholds 0.9 (sens 1/2, spec 1, J 1/2) and 0.4 (sens 1, spec 1/2, J 1/2).
  point = calibration.operating_point([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.1])
  assert point['threshold'] == 0.9


def test_sensitivity_rule_hand_made():
  labels = [1, 1, 1, 1, 0, 1, 0, 0, 1, 0, 1, 0]
  scores = [.95, .9, .85, .8, .75, .7, .6, .5, .45, .4, .3, .2]  # 7 positives
  # Sensitivity at threshold .7 is 5/7 = 0.71; at .45, 6/7 = 0.857; at .3, 1.
  point = calibration.operating_point(labels, scores, 'sensitivity', 0.8)
  assert point == {'threshold': 0.45, 'sensitivity': pytest.approx(6 / 7),
                   'specificity': pytest.approx(2 / 5), 'rule': 'sensitivity',
                   'target': 0.8}
  assert calibration.operating_point(labels, scores, 'sensitivity',
                                     5 / 7)['threshold'] == 0.7
  assert calibration.operating_point(labels, scores, 'sensitivity',
                                     0.0)['threshold'] == 0.95


def test_operating_point_masks_and_validates():
  with pytest.raises(ValueError, match='labels'):
    calibration.operating_point([1, 1, np.nan, 1], [0.1, 0.2, 0.3, 0.4])
  with pytest.raises(ValueError, match='rule'):
    calibration.operating_point([0, 1], [0.1, 0.2], rule='f1')
  masked = calibration.operating_point([1, np.nan, 0], [0.9, 0.5, 0.1])
  assert masked['threshold'] == 0.9


def test_threshold_metrics_match_sklearn():
  rng = np.random.default_rng(5)
  labels = (rng.random(250) < 0.4).astype(np.float64)
  scores = rng.random(250) + 0.3 * labels
  labels_masked = labels.copy()
  labels_masked[::9] = np.nan
  keep = ~np.isnan(labels_masked)
  result = calibration.threshold_metrics(labels_masked, scores, 0.7)
  predicted = (scores[keep] >= 0.7).astype(int)
  tn, fp, fn, tp = sk_metrics.confusion_matrix(labels[keep], predicted).ravel()
  assert (result['tp'], result['fp'], result['tn'], result['fn']) == (
      tp, fp, tn, fn)
  assert result['sensitivity'] == pytest.approx(tp / (tp + fn))
  assert result['specificity'] == pytest.approx(tn / (tn + fp))
  assert result['ppv'] == pytest.approx(
      sk_metrics.precision_score(labels[keep], predicted))
  assert result['npv'] == pytest.approx(tn / (tn + fn))
  assert result['f1'] == pytest.approx(
      sk_metrics.f1_score(labels[keep], predicted))


def test_threshold_metrics_score_at_threshold_is_positive():
  result = calibration.threshold_metrics([1, 0, 1, 0], [0.5, 0.5, 0.2, 0.9], 0.5)
  assert (result['tp'], result['fp'], result['tn'], result['fn']) == (1, 2, 0, 1)
  assert result['ppv'] == pytest.approx(1 / 3)
  assert result['specificity'] == 0.0 and result['npv'] == 0.0


def test_threshold_metrics_nan_for_empty_denominators():
  result = calibration.threshold_metrics([0, 1, 0], [0.1, 0.2, 0.3], 0.5)
  assert np.isnan(result['ppv'])  # nothing predicted positive
  assert result['sensitivity'] == 0.0 and result['npv'] == pytest.approx(2 / 3)


# --- temperature scaling -----------------------------------------------------


def test_fit_temperature_recovers_the_scale():
  rng = np.random.default_rng(6)
  true_logit = rng.normal(0.0, 1.5, 20000)
  labels = (rng.random(20000) < _sigmoid(true_logit)).astype(np.float64)
  logits = 3 * true_logit
  temperature = calibration.fit_temperature(labels, logits)
  assert temperature == pytest.approx(3.0, rel=0.1)
  before = calibration.expected_calibration_error(labels, _sigmoid(logits))
  after = calibration.expected_calibration_error(
      labels, _sigmoid(logits / temperature))
  assert after < before
  masked = labels.copy()
  masked[:1000] = np.nan
  assert calibration.fit_temperature(masked, logits) == pytest.approx(
      calibration.fit_temperature(labels[1000:], logits[1000:]), rel=1e-4)
