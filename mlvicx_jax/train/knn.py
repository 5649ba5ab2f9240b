"""Weighted k-nearest-neighbour monitor of frozen features (multi-label).

Why: during pretraining, a k-NN classifier on the frozen features of a
labelled train set, scored on a held-out set, is a cheap signal that the
representation improves, with no linear probe to train and no separate
evaluation job. This module is the pure maths; the loop decides when to run it.

Reference: the weighted k-NN of Wu et al. 2018 ("Unsupervised Feature Learning
via Non-Parametric Instance Discrimination") as used by DINO (Caron et al.
2021): cosine similarity s_j of the query to each of its k most similar train
rows (k = 20), vote weights w_j = exp(s_j / T) (T = 0.07).

Multi-label rule: the score of label c is the weighted fraction of neighbours
that carry it, sum_j w_j y_jc / sum_j w_j, in [0, 1]. For one-hot labels this
is DINO's class vote divided by its total, so the ranking is unchanged.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import metrics as sk_metrics

from mlvicx_jax import losses

_HIGHEST = jax.lax.Precision.HIGHEST
_l2_normalise_jit = jax.jit(losses.l2_normalize)


def _chunk_votes(train_unit: jax.Array, train_labels: jax.Array, queries: jax.Array,
                 temperature: jax.Array, k: int) -> jax.Array:
  """(q, C) weighted votes of one chunk of queries; memory O(q x N)."""
  sims = jnp.matmul(losses.l2_normalize(queries), train_unit.T, precision=_HIGHEST)
  top_sims, top_idx = jax.lax.top_k(sims, k)  # sorted, most similar first
  # exp((s - s_max) / T) = exp(s / T) * exp(-s_max / T): one factor per query
  # that cancels in the ratio below, so the votes are unchanged, and every
  # weight is in (0, 1] (no overflow whatever T).
  weights = jnp.exp((top_sims - top_sims[:, :1]) / temperature)
  neighbour_labels = train_labels[top_idx]  # (q, k, C)
  votes = jnp.einsum('qk,qkc->qc', weights, neighbour_labels, precision=_HIGHEST)
  return votes / jnp.sum(weights, axis=1, keepdims=True)


_chunk_votes_jit = jax.jit(_chunk_votes, static_argnames='k')


def _check_inputs(train_features, train_labels, query_features, k, temperature,
                  chunk_size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  train_features = np.asarray(train_features, dtype=np.float32)
  train_labels = np.asarray(train_labels, dtype=np.float32)
  query_features = np.asarray(query_features, dtype=np.float32)
  if train_features.ndim != 2 or query_features.ndim != 2:
    raise ValueError(f'features must be (N, D) and (Q, D), got {train_features.shape} '
                     f'and {query_features.shape}')
  if train_features.shape[1] != query_features.shape[1]:
    raise ValueError(f'train ({train_features.shape[1]}) and query '
                     f'({query_features.shape[1]}) feature dims differ')
  if train_labels.ndim != 2 or train_labels.shape[0] != train_features.shape[0]:
    raise ValueError(f'train_labels must be (N={train_features.shape[0]}, C), got '
                     f'{train_labels.shape}')
  if train_features.shape[0] == 0:
    raise ValueError('the train set is empty')
  if k < 1 or chunk_size < 1 or not temperature > 0:
    raise ValueError(f'need k >= 1, chunk_size >= 1 and temperature > 0; got k={k}, '
                     f'chunk_size={chunk_size}, temperature={temperature}')
  return train_features, train_labels, query_features


def knn_scores(train_features, train_labels, query_features, k: int = 20,
               temperature: float = 0.07, chunk_size: int = 1024) -> np.ndarray:
  """Temperature-weighted k-NN vote of every label for every query.

  Args:
    train_features: (N, D) features of the labelled memory set.
    train_labels: (N, C) multi-label targets (0/1).
    query_features: (Q, D) features to score.
    k: neighbours per query; clipped to N.
    temperature: T in the vote weights exp(cosine similarity / T).
    chunk_size: queries per jitted call, so memory is O(chunk_size x N). The
      last chunk is zero-padded to keep one compiled shape.

  Returns:
    (Q, C) float32 scores in [0, 1]: sum_j w_j y_jc / sum_j w_j over the k
    most cosine-similar train rows j.
  """
  train_features, train_labels, query_features = _check_inputs(
      train_features, train_labels, query_features, k, temperature, chunk_size)
  n_query = query_features.shape[0]
  n_classes = train_labels.shape[1]
  if n_query == 0:
    return np.zeros((0, n_classes), np.float32)
  k = min(int(k), train_features.shape[0])
  chunk = min(int(chunk_size), n_query)
  train_unit = _l2_normalise_jit(jnp.asarray(train_features))
  labels = jnp.asarray(train_labels)
  t = jnp.float32(temperature)
  out = np.empty((n_query, n_classes), np.float32)
  for start in range(0, n_query, chunk):
    block = query_features[start:start + chunk]
    rows = block.shape[0]
    if rows < chunk:
      block = np.concatenate([block, np.zeros((chunk - rows, block.shape[1]), np.float32)])
    votes = _chunk_votes_jit(train_unit, labels, jnp.asarray(block), t, k=k)
    out[start:start + rows] = np.asarray(votes)[:rows]
  return out


def knn_mean_auc(train_features, train_labels, query_features, query_labels,
                 k: int = 20, temperature: float = 0.07,
                 chunk_size: int = 1024) -> tuple[float, np.ndarray]:
  """Mean ROC AUC of the k-NN scores over labels, and each label's AUC.

  A label whose query labels are all 0 or all 1 has no AUC (NaN, with a
  `SingleValuedLabelWarning`) and is left out of the mean, as in the
  evaluation's metrics; NaN if no label is left.

  Returns:
    (mean_auc, per_label_auc) with per_label_auc a (C,) float64 array.
  """
  scores = knn_scores(train_features, train_labels, query_features, k=k,
                      temperature=temperature, chunk_size=chunk_size)
  per_label = label_aucs(np.asarray(query_labels), scores)
  finite = per_label[np.isfinite(per_label)]
  return (float(finite.mean()) if finite.size else float('nan')), per_label


class SingleValuedLabelWarning(UserWarning):
  """A label with a single value among the queries has no AUC."""


def label_aucs(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """ROC AUC of each label column (scikit-learn's), NaN for a single-valued one.

  Rows whose label is NaN (masked, e.g. CheXpert's uncertain) are left out of
  that column, as in the evaluation's metrics.
  """
  out = np.full(labels.shape[1], np.nan)
  for c in range(labels.shape[1]):
    keep = np.isfinite(labels[:, c])
    column, column_scores = labels[keep, c], scores[keep, c]
    if np.unique(column).size < 2:
      warnings.warn(f'label {c} has a single value among the queries: no AUC',
                    SingleValuedLabelWarning)
      continue
    out[c] = sk_metrics.roc_auc_score(column, column_scores)
  return out
