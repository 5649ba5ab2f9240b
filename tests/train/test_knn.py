"""Weighted k-NN monitor vs a float64 brute force, scikit-learn and sanity data."""

import numpy as np
import pytest
from sklearn import metrics as sk_metrics
from sklearn import neighbors

from mlvicx_jax.train import knn


def _random_set(n_train=300, n_query=50, dim=64, n_labels=7, seed=0):
  rng = np.random.default_rng(seed)
  train = rng.normal(size=(n_train, dim))
  labels = (rng.random((n_train, n_labels)) < 0.3).astype(np.float64)
  query = rng.normal(size=(n_query, dim))
  return train, labels, query


def _unit(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _brute_force(train, labels, query, k, temperature):
  """Transcription of the formula in float64, one query at a time."""
  train_unit = _unit(np.asarray(train, np.float64))
  k = min(k, len(train))
  out = np.zeros((len(query), labels.shape[1]))
  for i, q in enumerate(_unit(np.asarray(query, np.float64))):
    sims = train_unit @ q
    nearest = np.argsort(-sims)[:k]
    weights = np.exp(sims[nearest] / temperature)
    out[i] = weights @ labels[nearest] / weights.sum()
  return out


def _min_kth_gap(train, query, k):
  """Smallest gap between the k-th and (k+1)-th similarity: > 0 means no tie."""
  sims = np.sort(_unit(query) @ _unit(train).T, axis=1)[:, ::-1]
  return float(np.min(sims[:, k - 1] - sims[:, k]))


def test_matches_float64_brute_force_across_chunks():
  train, labels, query = _random_set()
  assert _min_kth_gap(train, query, 20) > 1e-4  # float32 picks the same neighbours
  scores = knn.knn_scores(train, labels, query, k=20, temperature=0.07, chunk_size=16)
  assert scores.dtype == np.float32 and scores.shape == (50, 7)
  np.testing.assert_allclose(scores, _brute_force(train, labels, query, 20, 0.07),
                             rtol=0, atol=1e-5)


def test_chunk_size_does_not_change_scores():
  train, labels, query = _random_set(seed=1)
  a = knn.knn_scores(train, labels, query, chunk_size=7)
  b = knn.knn_scores(train, labels, query, chunk_size=1024)
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_large_temperature_is_sklearn_uniform_knn():
  train, labels, query = _random_set(seed=9)
  k = 20
  assert _min_kth_gap(train, query, k) > 1e-4  # no ties: sklearn's pick is unique
  scores = knn.knn_scores(train, labels, query, k=k, temperature=1e6)
  model = neighbors.KNeighborsClassifier(n_neighbors=k, metric='cosine', weights='uniform')
  model.fit(train, labels.astype(int))  # multi-output: one (Q, 2) array per label
  expected = np.stack([p[:, list(c).index(1)] for p, c in
                       zip(model.predict_proba(query), model.classes_)], axis=1)
  np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)


def test_k_larger_than_train_set_uses_every_row():
  train, labels, query = _random_set(n_train=12, n_query=9, seed=3)
  scores = knn.knn_scores(train, labels, query, k=20, temperature=0.07)
  np.testing.assert_allclose(scores, _brute_force(train, labels, query, 12, 0.07),
                             rtol=0, atol=1e-5)
  np.testing.assert_allclose(scores, knn.knn_scores(train, labels, query, k=12),
                             rtol=0, atol=1e-6)


def test_small_temperature_does_not_overflow():
  # Queries are rescaled train rows, so the top similarity is 1 and the
  # unshifted weight exp(1 / 1e-3) overflows even float64. The shifted weights
  # stay finite and the vote is the row's own labels (next similarity ~0.4).
  train, labels, _ = _random_set(seed=4)
  query = train[:40] * np.linspace(0.5, 3.0, 40)[:, None]
  scores = knn.knn_scores(train, labels, query, k=5, temperature=1e-3)
  assert np.all(np.isfinite(scores))
  np.testing.assert_allclose(scores, labels[:40], rtol=0, atol=1e-6)


def test_auc_matches_sklearn_and_skips_single_valued_labels():
  train, labels, query = _random_set(n_query=80, seed=5)
  rng = np.random.default_rng(6)
  query_labels = (rng.random((80, 7)) < 0.3).astype(int)
  query_labels[:, 3] = 0  # no positive: AUC undefined, left out of the mean
  with pytest.warns(knn.SingleValuedLabelWarning):
    mean, per_label = knn.knn_mean_auc(train, labels, query, query_labels)
  scores = knn.knn_scores(train, labels, query)
  expected = [sk_metrics.roc_auc_score(query_labels[:, c], scores[:, c])
              for c in range(7) if c != 3]
  assert np.isnan(per_label[3])
  np.testing.assert_allclose(np.delete(per_label, 3), expected, rtol=0, atol=1e-12)
  assert mean == pytest.approx(np.mean(expected), abs=1e-12)


def _clustered(n, n_labels, dim, rng, centres, signal=2.0):
  labels = (rng.random((n, n_labels)) < 0.3).astype(np.float64)
  features = signal * labels @ centres + rng.normal(size=(n, dim)) / np.sqrt(dim)
  return features, labels


def test_features_that_carry_labels_score_high_and_shuffled_near_half():
  rng = np.random.default_rng(7)
  n_labels, dim = 7, 64
  centres = _unit(rng.normal(size=(n_labels, dim)))
  train, train_labels = _clustered(600, n_labels, dim, rng, centres)
  query, query_labels = _clustered(400, n_labels, dim, rng, centres)
  mean, _ = knn.knn_mean_auc(train, train_labels, query, query_labels)
  assert mean > 0.95

  # Each label column permuted on its own, train and query: the k-NN memory
  # holds no feature-label link and each query label is independent of the
  # scores, so each AUC is a null Mann-Whitney statistic with mean 1/2 and
  # variance (n_pos + n_neg + 1) / (12 n_pos n_neg), independent over labels.
  def shuffle(y):
    return np.stack([rng.permutation(col) for col in y.T], axis=1)
  shuffled = shuffle(query_labels)
  mean, _ = knn.knn_mean_auc(train, shuffle(train_labels), query, shuffled)
  n_pos = shuffled.sum(axis=0)
  n_neg = len(shuffled) - n_pos
  sigma = np.sqrt(np.sum((n_pos + n_neg + 1) / (12 * n_pos * n_neg))) / n_labels
  assert abs(mean - 0.5) < 4 * sigma  # 4 sigma of the mean: about 0.05 here
