"""Masked labels (CheXpert's uncertain ones under 'ignore') in the loss, the AUCs and a run.

References: scikit-learn's roc_auc_score on the unmasked rows, a float64
numpy transcription of the masked BCE, a bootstrap written out here with
scikit-learn, and the uncertain flags read straight from the build.
"""
import json
import os
import warnings

import jax
import ml_collections
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from helpers import eval_config
from helpers import split_images
from mlvicx_jax import evaluate
from mlvicx_jax.evaluate import classification
from mlvicx_jax.evaluate import data as data_lib
from mlvicx_jax.evaluate import metrics
from mlvicx_jax.evaluate import record_files
from mlvicx_jax.evaluate import records
from mlvicx_jax.report import summary as summary_lib

COMPETITION = ['Cardiomegaly', 'Edema', 'Consolidation', 'Atelectasis', 'Pleural Effusion']
CSV_ORDER = ['No Finding', 'Enlarged Cardiomediastinum', 'Cardiomegaly', 'Lung Opacity',
             'Lung Lesion', 'Edema', 'Consolidation', 'Pneumonia', 'Atelectasis',
             'Pneumothorax', 'Pleural Effusion', 'Pleural Other', 'Fracture',
             'Support Devices']


def masked_problem(n=300, k=5, seed=0):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, k)) < 0.3).astype(np.float64)
  scores = np.round(rng.random((n, k)) + 0.6 * labels, 1)  # rounded: many ties
  labels[rng.random((n, k)) < 0.3] = np.nan
  if k == 5:
    labels[:, 3] = np.where(np.isnan(labels[:, 3]), np.nan, 0.0)  # one value left: undefined
    labels[:, 4] = np.nan  # all masked: undefined
  return labels, scores


def sklearn_aucs(labels, scores):
  out = []
  for k in range(labels.shape[1]):
    keep = ~np.isnan(labels[:, k])
    y = labels[keep, k]
    out.append(sk_metrics.roc_auc_score(y, scores[keep, k]) if 0 < y.sum() < len(y)
               else np.nan)
  return np.array(out)


def test_masked_auc_equals_sklearn_on_the_unmasked_rows():
  labels, scores = masked_problem()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    auc = metrics.per_class_auc(labels, scores, ['a', 'b', 'c', 'd', 'e'])
  expected = sklearn_aucs(labels, scores)
  np.testing.assert_array_equal(np.isnan(auc), [False, False, False, True, True])
  assert np.max(np.abs(auc[:3] - expected[:3])) < 1e-12
  assert any("'e'" in str(w.message) and 'masked' in str(w.message) for w in caught)
  summary = classification.summary(labels, scores, list('abcde'))
  assert summary['mean_auc'] == pytest.approx(np.mean(expected[:3]), abs=1e-12)
  # No mask: the same numbers as before masks existed.
  full = np.nan_to_num(labels[:, :3])
  np.testing.assert_allclose(metrics.per_class_auc(full, scores[:, :3]),
                             sklearn_aucs(full, scores[:, :3]), atol=1e-12)


def sklearn_bootstrap(labels, scores, n_boot, seed=0):
  """95% percentile CI of the mean AUC, resampling as documented (one draw of n rows)."""
  n = len(labels)
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(n_boot):
    idx = rng.integers(0, n, size=n)
    aucs = sklearn_aucs(labels[idx], scores[idx])
    if not np.isnan(aucs).any():  # a class single-valued in the resample: skipped
      values.append(aucs.mean())
  return np.percentile(values, [2.5, 97.5])


def test_masked_bootstrap_equals_a_sklearn_bootstrap(tmp_path):
  labels, scores = masked_problem(n=120, k=3, seed=1)
  expected = sklearn_bootstrap(labels, scores, 60)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    fast = metrics.bootstrap_mean_auc_ci(labels, scores, n_boot=60, seed=0)
    generic = metrics.bootstrap_ci(labels, scores, metrics.mean_auc, n_boot=60, seed=0)
  np.testing.assert_allclose(fast, expected, atol=1e-12)
  np.testing.assert_allclose(generic, expected, atol=1e-12)
  # The report's CI from saved predictions that carry masked labels as NaN.
  record = records.make_record('chexpert', 'frozen', 1.0, 0, None,
                               classification.summary(labels, scores, list('abc')))
  record_files.write_run_record(str(tmp_path), record, {'labels': labels, 'scores': scores})
  (loaded,) = record_files.load_run_records(str(tmp_path))
  ci, source = summary_lib.run_ci(loaded, 60, 0.05, 0)
  assert source == 'bootstrap'
  np.testing.assert_allclose(ci, expected, atol=1e-12)
  assert loaded['test']['mean_auc'] == pytest.approx(
      np.mean(sklearn_aucs(labels, scores)), abs=1e-12)


def test_masked_bce_equals_numpy():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(6, 4)).astype(np.float32) * 3
  labels = (rng.random((6, 4)) < 0.4).astype(np.float32)
  label_mask = rng.random((6, 4)) < 0.7
  mask = np.array([True, True, True, True, False, False])
  x, y = logits.astype(np.float64), labels.astype(np.float64)
  per_entry = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
  weight = mask[:, None] & label_mask
  expected = (per_entry * weight).sum() / weight.sum()
  got = classification.bce_loss(logits, labels, mask, label_mask)
  assert abs(float(got) - expected) < 1e-6
  # Masked entries do not matter, whatever their label.
  flipped = np.where(label_mask, labels, 1 - labels)
  assert abs(float(classification.bce_loss(logits, flipped, mask, label_mask)) - expected) < 1e-6
  # No label mask: the plain mean over the real rows' entries.
  plain = per_entry[:4].mean()
  assert abs(float(classification.bce_loss(logits, labels, mask)) - plain) < 1e-6
  y0, m0 = classification.split_masked(np.where(label_mask, labels, np.nan))
  np.testing.assert_array_equal(m0, label_mask)
  np.testing.assert_array_equal(y0, np.where(label_mask, labels, 0))


# --- a run on synthetic CheXpert ---------------------------------------------------------


@pytest.fixture(scope='module')
def chexpert_dir(tmp_path_factory):
  """60 synthetic CheXpert films (release layout) built at 96 px."""
  from mlvicx_jax.data import prepare  # pylint: disable=g-import-not-at-top
  from mlvicx_jax import synthetic  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('chexpert')
  synthetic.generate('chexpert', str(root / 'raw'), 60, seed=0, image_size=96)
  data_dir = str(root / 'tfds')
  prepare.prepare('chexpert', str(root / 'raw'), data_dir, image_size=96, num_workers=0)
  return data_dir


def _stored(data_dir, split):
  """(file names, labels, uncertain) (N, 14) as stored, read without the code under test."""
  from mlvicx_jax.data import sources  # pylint: disable=g-import-not-at-top
  source = sources.data_source(data_dir, 'chexpert', split)
  records = [source[i] for i in range(len(source))]
  return ([r['file_name'].decode() for r in records],
          np.stack([r['label'] for r in records]), np.stack([r['uncertain'] for r in records]))


def test_competition_subset_policy_and_label_subsets(chexpert_dir):
  data = data_lib.open_task_data(chexpert_dir, 'chexpert', classes='competition',
                                 uncertain='u_ones')
  assert data.class_names == tuple(COMPETITION) and data.uncertain == 'u_ones'
  columns = [CSV_ORDER.index(n) for n in COMPETITION]
  names, stored, unsure = _stored(chexpert_dir, 'train')
  got_names, got = data.train_metadata
  assert got_names == names
  np.testing.assert_array_equal(got, np.maximum(stored, unsure)[:, columns])
  config = ml_collections.ConfigDict(dict(label_subset='fixed', label_subset_seed=0,
                                          positive_per_class=True))
  subset = data_lib.train_subset(config, data, 0.1, 0)
  for k in range(len(COMPETITION)):  # every class with a positive in train has one
    assert got[:, k].sum() == 0 or got[subset.indices, k].sum() >= 1
  with pytest.raises(ValueError, match='Fracturee'):
    data_lib.open_task_data(chexpert_dir, 'chexpert', classes='Edema,Fracturee')
  listed = data_lib.open_task_data(chexpert_dir, 'chexpert', classes='Pleural Effusion,Edema')
  assert listed.class_indices == (10, 5) and listed.uncertain == 'ignore'
  assert eval_config('chexpert', '').classes == 'competition'
  assert eval_config('chexpert', 'all').classes == 'all'


def spy_on_loss(monkeypatch) -> list:
  """Records the label_mask shape every traced loss gets (None: no mask)."""
  seen, real = [], classification.bce_loss

  def spy(logits, labels, mask=None, label_mask=None):
    seen.append(None if label_mask is None else tuple(label_mask.shape))
    return real(logits, labels, mask, label_mask)

  monkeypatch.setattr(classification, 'bce_loss', spy)
  return seen


def test_chexpert_frozen_run_leaves_masked_labels_out(chexpert_dir, tmp_path, monkeypatch):
  config = eval_config('chexpert', data_dir=chexpert_dir, protocol='frozen', n_boot=20)
  assert (config.classes, config.uncertain) == ('competition', 'ignore')
  workdir = str(tmp_path / 'run')
  losses = spy_on_loss(monkeypatch)
  record = evaluate.run(config, workdir)[0]
  assert losses and all(shape is not None and shape[1] == 5 for shape in losses)
  assert record['label_policy'] == {'uncertain': 'ignore', 'classes': COMPETITION}
  with open(os.path.join(workdir, 'run_record_chexpert_frozen_f1_seed0.json')) as f:
    assert json.load(f)['config']['uncertain'] == 'ignore'
  pred = np.load(os.path.join(workdir, record['predictions']))
  assert list(pred['class_names']) == COMPETITION
  # Test split (valid.csv): no uncertain labels, so nothing masked.
  names, stored, unsure = _stored(chexpert_dir, 'test')
  columns = [CSV_ORDER.index(n) for n in COMPETITION]
  assert not unsure.any()
  np.testing.assert_array_equal(pred['labels'], stored[:, columns])
  expected = sklearn_aucs(pred['labels'], pred['scores'])
  assert np.isfinite(expected).any()
  for k, name in enumerate(COMPETITION):
    got = record['test']['per_class_auc'][name]
    assert (np.isnan(got) and np.isnan(expected[k])) or abs(got - expected[k]) < 1e-12
  # Validation: the model's scores on the validation split, AUC on the rows not uncertain.
  model, variables = classification.restore_classifier(record['model'])
  data = data_lib.open_task_data(chexpert_dir, 'chexpert', classes='competition')
  images, _ = split_images(config, data, 'validation')
  scores = np.asarray(jax.nn.sigmoid(model.apply(variables, images, train=False)), np.float64)
  _, val_stored, val_unsure = _stored(chexpert_dir, 'validation')
  val_labels = np.where(val_unsure, np.nan, val_stored)[:, columns]
  assert np.isnan(val_labels).any()  # there is something to leave out
  expected_val = sklearn_aucs(val_labels, scores)
  assert np.isfinite(expected_val).any()
  for k, name in enumerate(COMPETITION):
    got = record['val']['per_class_auc'][name]
    assert (np.isnan(got) and np.isnan(expected_val[k])) or abs(got - expected_val[k]) < 1e-6
  # A second invocation with another policy refuses to reuse this record.
  config.uncertain = 'u_ones'
  with pytest.raises(ValueError, match='holds a run with labels'):
    evaluate.run(config, workdir)


def test_trunk_every_step_gets_the_label_mask(chexpert_dir, tmp_path, monkeypatch):
  config = eval_config('chexpert', data_dir=chexpert_dir, protocol='frozen', n_boot=0,
                       frozen_feature_cache=False, num_epochs=1, save_model=False)
  losses = spy_on_loss(monkeypatch)
  record = evaluate.run(config, str(tmp_path / 'run'))[0]
  assert losses and all(shape is not None and shape[1] == 5 for shape in losses)
  assert not record['feature_cache'] and np.isfinite(record['history'][0]['train_loss'])
