"""Calibration and operating points of a classification run, against scikit-learn.

One frozen :smoke run on the session's synthetic NIH build, temperature
scaling on. Every number its record holds is recomputed here from the saved
predictions: ECE with sklearn's calibration_curve and the counts of its
documented bins, Brier with brier_score_loss, thresholds with roc_curve on the
saved validation scores, test rates with confusion_matrix, intervals with a
bootstrap written out as a plain loop, the temperature by its optimality.
"""
import csv
import os

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from helpers import eval_config
from helpers import sklearn_ece
from mlvicx_jax import evaluate
from mlvicx_jax import report
from mlvicx_jax.evaluate import records

N_BOOT = 40
RATES = ('sensitivity', 'specificity', 'ppv', 'npv', 'f1')


@pytest.fixture(scope='module')
def run(nih_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('calibration_run'))
  config = eval_config('nih', data_dir=nih_data_dir, protocol='frozen', n_boot=N_BOOT,
                       save_model=False)
  assert config.target_sensitivity == 0.9 and not config.calibration.temperature
  config.calibration.temperature = True
  (record,) = evaluate.run(config, workdir)
  with np.load(os.path.join(workdir, record['predictions'])) as saved:
    predictions = {k: saved[k] for k in saved.files}
  return record, predictions, workdir


def check_calibration(entry, labels, probs):
  keep = ~np.isnan(labels)
  y, p = labels[keep], np.asarray(probs, np.float64)[keep]
  assert entry['n'] == y.size
  assert entry['ece_uniform'] == pytest.approx(sklearn_ece(y, p, 'uniform'), abs=1e-9)
  assert entry['ece_quantile'] == pytest.approx(sklearn_ece(y, p, 'quantile'), abs=1e-9)
  assert entry['brier'] == pytest.approx(sk_metrics.brier_score_loss(y, p, labels=[0, 1]),
                                         abs=1e-9)


def test_calibration_per_class_and_pooled_equals_sklearn(run):
  record, pred, _ = run
  names = [str(n) for n in pred['class_names']]
  splits = (('test', pred['labels'], pred['scores']),
            ('val', pred['val_labels'], pred['val_scores']))
  for split, labels, scores in splits:
    entry = record['calibration'][split]
    assert entry['n_images'] == len(labels) == record['num_examples'][
        'test' if split == 'test' else 'validation']
    assert list(entry['classes']) == names
    for k, name in enumerate(names):
      check_calibration(entry['classes'][name], labels[:, k], scores[:, k])
    check_calibration(entry['pooled'], labels.ravel(), scores.ravel())
  assert record['calibration']['test']['pooled']['ece_uniform'] > 0.01  # a zero would pass


def sklearn_thresholds(labels, scores, target):
  """(Youden, target-sensitivity) thresholds from roc_curve on the labelled rows."""
  fpr, tpr, thresholds = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
  fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]  # the leading 'predict nothing'
  j = tpr - fpr
  youden = thresholds[np.flatnonzero(j >= j.max() - 1e-12)[0]]  # ties: the highest
  return youden, thresholds[np.flatnonzero(tpr >= target)[0]]


def sklearn_rates(labels, predicted) -> dict:
  tn, fp, fn, tp = sk_metrics.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
  ratio = lambda a, b: a / b if b else np.nan
  return {'sensitivity': ratio(tp, tp + fn), 'specificity': ratio(tn, tn + fp),
          'ppv': ratio(tp, tp + fp), 'npv': ratio(tn, tn + fn),
          'f1': sk_metrics.f1_score(labels, predicted, labels=[0, 1], zero_division=np.nan),
          'tp': tp, 'fp': fp, 'tn': tn, 'fn': fn}


def same(got, expected, abs_tol=1e-12):
  """A recorded number (None: undefined) against a reference (NaN: undefined)."""
  if got is None:
    return np.isnan(expected)
  return not np.isnan(expected) and abs(got - expected) <= abs_tol


def loop_bootstrap(labels, scores, threshold, draws):
  """95% percentile intervals of the rates over the given resamples, undefined ones left out."""
  values = {rate: [] for rate in RATES}
  for idx in draws:
    rates = sklearn_rates(labels[idx], scores[idx] >= threshold)
    for rate in RATES:
      if not np.isnan(rates[rate]):
        values[rate].append(rates[rate])
  return {rate: np.percentile(v, [2.5, 97.5]) if v else None for rate, v in values.items()}


def test_operating_points_rederived_from_saved_validation(run):
  record, pred, _ = run
  points = record['operating_points']
  assert (points['target_sensitivity'], points['n_boot']) == (0.9, N_BOOT)
  assert points['n_images'] == len(pred['labels'])
  rng = np.random.default_rng(points['bootstrap_seed'])
  n = len(pred['labels'])
  draws = [rng.integers(0, n, size=n) for _ in range(N_BOOT)]  # one draw per resample
  chosen = 0
  for k, name in enumerate(str(c) for c in pred['class_names']):
    val_y, val_s = pred['val_labels'][:, k], pred['val_scores'][:, k]
    if val_y.min() == val_y.max():
      assert points['classes'][name] is None
      assert points['reasons'][name].startswith('single-valued on validation')
      continue
    chosen += 1
    expected = dict(zip(('youden', 'sensitivity'), sklearn_thresholds(val_y, val_s, 0.9)))
    for rule, threshold in expected.items():
      point = points['classes'][name][rule]
      assert point['threshold'] == threshold
      test_y, test_s = pred['labels'][:, k], pred['scores'][:, k]
      rates = sklearn_rates(test_y, test_s >= threshold)
      for key in RATES + ('tp', 'fp', 'tn', 'fn'):
        assert same(point[key], rates[key]), (name, rule, key, point[key], rates[key])
      val_rates = sklearn_rates(val_y, val_s >= threshold)
      assert point['val_sensitivity'] == pytest.approx(val_rates['sensitivity'], abs=1e-12)
      assert point['val_specificity'] == pytest.approx(val_rates['specificity'], abs=1e-12)
      if rule == 'sensitivity':
        assert point['val_sensitivity'] >= 0.9
      intervals = loop_bootstrap(test_y, test_s, threshold, draws)
      for rate in RATES:
        if intervals[rate] is None:
          assert point['ci95'][rate] is None
        else:
          np.testing.assert_allclose(point['ci95'][rate], intervals[rate], atol=1e-12)
  assert chosen >= 3  # enough classes with both labels on validation to mean something


def test_temperature_synthetic_flag_and_csv(run):
  record, pred, workdir = run
  assert record['synthetic_data'] is True
  fitted = record['calibration']['temperature']
  assert fitted['reason'] is None
  assert fitted['before'] == record['calibration']['test']['pooled']
  logit = lambda p: np.log(np.clip(p, 1e-7, 1 - 1e-7)) - np.log1p(-np.clip(p, 1e-7, 1 - 1e-7))
  y, z = pred['val_labels'].ravel(), logit(pred['val_scores'].astype(np.float64).ravel())
  bce = lambda t: np.mean(np.logaddexp(0, z / t) - y * z / t)
  t = fitted['value']
  assert bce(t) <= min(bce(t * 1.01), bce(t / 1.01))  # a minimum of the validation BCE
  assert bce(t) < bce(1.0) - 1e-4  # and a better one than no scaling
  scaled = 1 / (1 + np.exp(-logit(pred['scores'].astype(np.float64)) / t))
  check_calibration(fitted['after'], pred['labels'].ravel(), scaled.ravel())
  with open(os.path.join(workdir, records.record_stem(record) + '.csv'), encoding='utf-8') as f:
    (row,) = list(csv.DictReader(f))
  assert row['synthetic_data'] == 'True'
  assert float(row['test_ece_uniform']) == pytest.approx(
      fitted['before']['ece_uniform'], abs=1e-9)


def test_report_of_the_run_says_synthetic_and_shows_no_paper(run, tmp_path, monkeypatch):
  record, _, workdir = run
  from mlvicx_jax.report import plots  # pylint: disable=g-import-not-at-top
  drawn, real = [], plots.plot_metric_vs_fraction
  monkeypatch.setattr(plots, 'plot_metric_vs_fraction',
                      lambda *a, **kw: drawn.append((a, kw)) or real(*a, **kw))
  out = report.build_report([workdir], str(tmp_path / 'report'), labels=['smoke'], n_boot=0)
  markdown = (tmp_path / 'report' / 'report.md').read_text(encoding='utf-8')
  assert '## NIH ChestX-ray14, frozen (linear probe): mean AUC (synthetic data)' in markdown
  assert '(paper)' not in markdown
  ((args, _),) = drawn
  series, _, _, title, paper = args
  assert title.endswith('(synthetic data)') and not paper and len(series) == 1
  pooled = record['calibration']['test']['pooled']
  row = next(line for line in markdown.splitlines() if line.startswith('| pooled'))
  cells = [c.strip() for c in row.strip('|').split('|')]
  assert cells[1:] == [f'{pooled["ece_uniform"]:.3f}', f'{pooled["ece_quantile"]:.3f}',
                       f'{pooled["brier"]:.3f}', str(pooled['n'])]
  assert any(p.endswith('reliability_smoke_nih_frozen_f1.png') for p in out['plots'])
