"""The report's calibration and operating-point tables vs scikit-learn; synthetic data marked."""

import json
import os

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

import report_runs
from helpers import sklearn_ece
from mlvicx_jax.evaluate import record_files
from mlvicx_jax.evaluate import records
from mlvicx_jax import report

_CAL_CLASSES = ['Atelectasis', 'Effusion', 'Hernia']


def _calibration_predictions(seed):
  """Miscalibrated probabilities with ties, masked labels; no validation positive of Hernia."""
  rng = np.random.default_rng(100 + seed)

  def split(n):
    labels = (rng.random((n, 3)) < [0.3, 0.5, 0.2]).astype(np.float64)
    scores = np.round(np.sqrt(np.clip(0.6 * rng.random((n, 3)) + 0.35 * labels, 0, 1)), 2)
    labels[rng.random((n, 3)) < 0.1] = np.nan
    return labels, scores

  labels, scores = split(200)
  val_labels, val_scores = split(80)
  val_labels[:, 2] = np.where(np.isnan(val_labels[:, 2]), np.nan, 0.0)
  return dict(labels=labels, scores=scores, val_labels=val_labels, val_scores=val_scores,
              class_names=_CAL_CLASSES)


def _write_calibration_set(root, synthetic, seeds=(0, 1)):
  """NIH frozen 100% runs whose records lack the new fields: the report derives them."""
  from mlvicx_jax.evaluate import metrics  # pylint: disable=g-import-not-at-top
  for seed in seeds:
    p = _calibration_predictions(seed)
    test = metrics.classification_summary(p['labels'], p['scores'], _CAL_CLASSES)
    record = records.make_record('nih', 'frozen', 1.0, seed, None, test,
                                 synthetic_data=synthetic, encoder=report_runs.KEPT)
    record_files.write_run_record(str(root / f'seed{seed}'), record, p)


def _sk_calibration(labels, probs):
  keep = ~np.isnan(labels)
  y, p = labels[keep], probs[keep]
  return [sklearn_ece(y, p, 'uniform'), sklearn_ece(y, p, 'quantile'),
          sk_metrics.brier_score_loss(y, p, labels=[0, 1]), y.size]


def _sk_operating_point(val_y, val_s, test_y, test_s, rule):
  """Threshold from roc_curve on validation; test rates from confusion_matrix."""
  keep = ~np.isnan(val_y)
  fpr, tpr, thresholds = sk_metrics.roc_curve(val_y[keep], val_s[keep],
                                              drop_intermediate=False)
  fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
  if rule == 'youden':
    threshold = thresholds[np.flatnonzero(tpr - fpr >= np.max(tpr - fpr) - 1e-12)[0]]
  else:
    threshold = thresholds[np.flatnonzero(tpr >= 0.9)[0]]
  keep = ~np.isnan(test_y)
  tn, fp, fn, tp = sk_metrics.confusion_matrix(test_y[keep], test_s[keep] >= threshold,
                                               labels=[0, 1]).ravel()
  return [threshold, tp / (tp + fn), tn / (tn + fp), tp / (tp + fp), tn / (tn + fn),
          2 * tp / (2 * tp + fp + fn)], (tp + fn, tp + fp + tn + fn)


def _loop_sensitivity_ci(labels, scores, threshold, n_boot):
  """95% interval of the sensitivity over resamples of the rows (one draw each, seed 0)."""
  rng = np.random.default_rng(0)
  values = []
  for _ in range(n_boot):
    idx = rng.integers(0, len(labels), size=len(labels))
    y, s = labels[idx], scores[idx]
    keep = y == 1
    if keep.any():
      values.append(sk_metrics.recall_score(y[keep], s[keep] >= threshold, zero_division=0))
  return np.percentile(values, [2.5, 97.5])


def test_calibration_and_operating_point_tables_match_sklearn(tmp_path):
  _write_calibration_set(tmp_path / 'real', synthetic=False)
  out = tmp_path / 'report'
  outputs = report.build_report([str(tmp_path / 'real')], str(out), n_boot=200)
  markdown = (out / 'report.md').read_text(encoding='utf-8')
  setting = 'NIH ChestX-ray14, frozen (linear probe), 100%, real'
  table = report_runs.table_after(markdown, f'### Calibration: {setting}')
  assert table[0] == ['class', 'ECE (15 equal-width bins)', 'ECE (15 equal-mass bins)',
                      'Brier', 'labelled test entries']
  rows = {row[0]: row for row in table[1:]}
  assert list(rows) == _CAL_CLASSES + ['pooled (all classes)']
  runs = [_calibration_predictions(seed) for seed in (0, 1)]
  for k, name in enumerate(list(rows)):
    column = (lambda a: a[:, k]) if k < 3 else np.ravel
    values = np.array([_sk_calibration(column(p['labels']), column(p['scores']))
                       for p in runs])
    for j in range(3):
      mean, sd = report_runs.cell_numbers(rows[name][1 + j])
      assert mean == pytest.approx(values[:, j].mean(), abs=5e-4)
      assert sd == pytest.approx(values[:, j].std(ddof=1), abs=5e-4)
    assert rows[name][4] == (f"{int(values[0, 3]):,}" if values[0, 3] == values[1, 3] else
                             f"{int(values[:, 3].min()):,}–{int(values[:, 3].max()):,}")
  section = markdown.split(f'### Calibration: {setting}', 1)[1].split('\n#', 1)[0]
  assert 'On 200 test images, masked labels left out; mean ± sd over 2 seeds.' in section

  p = runs[0]
  for rule, title in (('youden', "Youden's J"), ('sensitivity', 'sensitivity ≥ 0.9')):
    heading = f'### Operating point, {title}: {setting}, seed 0 of 2'
    table = report_runs.table_after(markdown, heading)
    assert table[0] == ['class', 'threshold', 'sensitivity', 'specificity', 'PPV', 'NPV',
                        'F1', 'test positives / labelled']
    rows = {row[0]: row for row in table[1:]}
    for k, name in enumerate(_CAL_CLASSES[:2]):
      expected, (positives, labelled) = _sk_operating_point(
          p['val_labels'][:, k], p['val_scores'][:, k], p['labels'][:, k],
          p['scores'][:, k], rule)
      for j, value in enumerate(expected):
        numbers = report_runs.cell_numbers(rows[name][1 + j])
        assert numbers[0] == pytest.approx(value, abs=5e-4)
        if j:  # a rate with its bootstrap interval around it
          assert len(numbers) == 3 and numbers[1] - 5e-4 <= numbers[0] <= numbers[2] + 5e-4
      expected_ci = _loop_sensitivity_ci(p['labels'][:, k], p['scores'][:, k], expected[0],
                                         200)
      assert report_runs.cell_numbers(rows[name][2])[1:] == pytest.approx(expected_ci, abs=5e-4)
      assert rows[name][7] == f'{positives} / {labelled}'
    assert rows['Hernia'][1:] == ['–'] * 7
    section = markdown.split(heading, 1)[1].split('\n#', 1)[0]
    assert 'on 200 test images' in section and '(200 resamples)' in section
    assert ('No threshold for Hernia (single-valued on validation: 0 positives, '
            f'{int(np.sum(~np.isnan(p["val_labels"][:, 2])))} negatives after masking).'
            in section)

  png = out / 'reliability_real_nih_frozen_f1.png'
  assert str(png) in outputs['plots']
  data = png.read_bytes()
  assert data.startswith(report_runs.PNG_SIGNATURE) and len(data) > 1000
  summary = json.loads((out / 'summary.json').read_text(encoding='utf-8'))
  assert [e['seed'] for e in summary['calibration']] == [0, 1]


def _figure_titles(monkeypatch):
  """Titles of every figure the report saves, and the paper series of each metric plot."""
  from mlvicx_jax.report import plots  # pylint: disable=g-import-not-at-top
  titles, papers = [], []
  save, metric_plot = plots._save, plots.plot_metric_vs_fraction  # pylint: disable=protected-access

  def spy_save(fig, path):
    titles.append((os.path.basename(path), fig.axes[0].get_title()))
    return save(fig, path)

  def spy_metric(series, path, metric_name, title='', paper=None):
    papers.append((os.path.basename(path), dict(paper or {})))
    return metric_plot(series, path, metric_name, title, paper)

  monkeypatch.setattr(plots, '_save', spy_save)
  monkeypatch.setattr(plots, 'plot_metric_vs_fraction', spy_metric)
  return titles, papers


def test_synthetic_records_say_so_and_stand_beside_no_paper_row(tmp_path, monkeypatch):
  _write_calibration_set(tmp_path / 'synth', synthetic=True)
  report_runs.write_run_set(tmp_path / 'synth', {('finetune', 0.1): [0.78, 0.79]}, {},
                            with_predictions=False)
  for path in (tmp_path / 'synth').rglob('run_record_*_finetune_*.json'):
    raw = json.loads(path.read_text(encoding='utf-8'))
    path.write_text(json.dumps(dict(raw, synthetic_data=True)), encoding='utf-8')
  titles, papers = _figure_titles(monkeypatch)
  out = tmp_path / 'report'
  report.build_report([str(tmp_path / 'synth')], str(out), n_boot=50)
  markdown = (out / 'report.md').read_text(encoding='utf-8')
  headings = [line for line in markdown.splitlines()
              if line.startswith(('## ', '### ')) and line != '## Figures']
  assert len(headings) >= 8
  for heading in headings:
    assert '(synthetic data)' in heading, heading
  assert '(paper)' not in markdown and 'Paper: ' not in markdown
  fine_tune = report_runs.table_after(
      markdown, '## NIH ChestX-ray14, fine-tune: mean AUC (synthetic data)')
  assert fine_tune[0] == ['method', '10%'] and [r[0] for r in fine_tune[1:]] == [
      'synth (reproduced)']
  assert {name for name, _ in titles} >= {'mean_auc_vs_fraction_nih.png',
                                          'reliability_synth_nih_frozen_f1.png'}
  for name, title in titles:
    assert title.endswith('(synthetic data)'), (name, title)
  assert papers == [('mean_auc_vs_fraction_nih.png', {})]
  summary = json.loads((out / 'summary.json').read_text(encoding='utf-8'))
  assert all(c['paper'] is None and c['synthetic'] for c in summary['cells'])


def test_synthetic_rows_beside_real_ones_are_marked(tmp_path, monkeypatch):
  report_runs.write_run_set(tmp_path / 'real', {('frozen', 1.0): [0.70, 0.71]}, {},
                            with_predictions=False)
  _write_calibration_set(tmp_path / 'synth', synthetic=True)
  titles, papers = _figure_titles(monkeypatch)
  out = tmp_path / 'report'
  report.build_report([str(tmp_path / 'real'), str(tmp_path / 'synth')], str(out),
                      n_boot=0)
  markdown = (out / 'report.md').read_text(encoding='utf-8')
  table = report_runs.table_after(markdown, '## NIH ChestX-ray14, frozen (linear probe): mean AUC '
                       '(paper Table II)')
  assert [r[0] for r in table[1:]] == ['MLVICX (paper)', 'real (reproduced)',
                                       'synth (reproduced, synthetic data)']
  (paper,) = [p for name, p in papers if name == 'mean_auc_vs_fraction_nih.png']
  assert list(paper) == ['MLVICX paper, frozen']
  assert dict(titles)['mean_auc_vs_fraction_nih.png'] == 'NIH ChestX-ray14: mean AUC'
  assert '### Calibration: NIH ChestX-ray14, frozen (linear probe), 100%, synth ' \
         '(synthetic data)' in markdown
  assert 'bootstrap' not in markdown.split('### Operating point, Youden', 1)[1].split(
      '\n#', 1)[0]  # n_boot 0: no intervals


def test_calibration_fields_validate_and_round_trip(tmp_path):
  from mlvicx_jax.evaluate import calibration_record  # pylint: disable=g-import-not-at-top
  p = _calibration_predictions(0)
  fields = calibration_record.record_fields(
      (p['val_labels'], p['val_scores']), p['labels'], p['scores'], _CAL_CLASSES,
      n_boot=20, temperature=True)
  record = records.make_record('nih', 'frozen', 1.0, 0, None, {'mean_auc': 0.7},
                               synthetic_data=True, **fields)
  record_files.write_run_record(str(tmp_path), record)
  (loaded,) = record_files.load_run_records(str(tmp_path))
  assert loaded['synthetic_data'] is True
  for field in ('calibration', 'operating_points'):
    assert loaded[field] == json.loads(json.dumps(record_files.json_ready(fields[field])))
  assert loaded['operating_points']['classes']['Hernia'] is None
  good = json.loads(json.dumps(record_files.json_ready(record)))
  cal, points = good['calibration'], good['operating_points']
  youden = points['classes']['Effusion']['youden']
  cases = [
      (dict(good, synthetic_data='yes'), 'field synthetic_data must be true, false or null'),
      (dict(good, calibration=dict(cal, test=dict(cal['test'], pooled=dict(
          cal['test']['pooled'], ece_uniform=1.5)))), 'calibration.test.pooled.ece_uniform'),
      (dict(good, calibration=dict(cal, val=dict(cal['val'], classes={'Effusion': {}}))),
       'calibration.val.classes.Effusion lacks'),
      (dict(good, calibration=dict(cal, temperature=dict(cal['temperature'], value=-1))),
       'calibration.temperature.value'),
      (dict(good, operating_points=dict(points, classes=dict(points['classes'], Effusion=dict(
          points['classes']['Effusion'], youden=dict(youden, ci95=dict(
              youden['ci95'], ppv=[0.5])))))), 'operating_points.classes.Effusion.youden.ci95.ppv'),
      (dict(good, operating_points=dict(points, reasons={'Hernia': None})),
       'operating_points.reasons.Hernia'),
  ]
  report_runs.assert_each_is_refused_by_name(tmp_path, cases)
