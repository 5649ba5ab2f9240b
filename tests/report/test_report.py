"""Run records and the report CLI vs independent data."""

import csv
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk_metrics

import conftest
from helpers import sklearn_ece
from mlvicx_jax.evaluate import record_files
from mlvicx_jax.evaluate import records
from mlvicx_jax import report
from mlvicx_jax.report import summary as summary_lib

REPO = pathlib.Path(conftest.REPO)
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


# --- records -----------------------------------------------------------------


def _strict_json(path):
  def reject(constant):
    raise ValueError(f'non-standard JSON constant {constant}')
  with open(path, encoding='utf-8') as f:
    return json.load(f, parse_constant=reject)


def test_record_round_trip_with_nan_auc_and_predictions(tmp_path):
  labels = np.array([[0, 1], [1, 1], [0, 1], [1, 1]])
  scores = np.array([[0.2, 0.5], [0.9, 0.1], [0.4, 0.3], [0.3, 0.8]])
  test = {'mean_auc': 0.75,
          'per_class_auc': {'Effusion': 0.75, 'Hernia': float('nan')}}
  record = records.make_record('NIH', 'fine-tune', 0.1, 2, '/ckpt', test,
                               best_epoch=7, ci95=(0.6, 0.9))
  path = record_files.write_run_record(
      str(tmp_path), record,
      predictions={'labels': labels, 'scores': scores,
                   'class_names': ['Effusion', 'Hernia']})
  assert os.path.basename(path) == 'run_record_nih_finetune_f0.1_seed2.json'
  raw = _strict_json(path)  # NaN is written as null, not as NaN
  assert raw['test']['per_class_auc'] == {'Effusion': 0.75, 'Hernia': None}
  assert raw['metric_name'] == 'mean_auc'

  (loaded,) = record_files.load_run_records(str(tmp_path))
  assert (loaded['task'], loaded['protocol'], loaded['seed']) == (
      'nih', 'finetune', 2)
  assert math.isnan(loaded['test']['per_class_auc']['Hernia'])
  assert loaded['best_epoch'] == 7 and loaded['ci95'] == [0.6, 0.9]
  predictions = record_files.load_predictions(loaded)
  np.testing.assert_array_equal(predictions['labels'], labels)
  np.testing.assert_array_equal(predictions['scores'], scores)
  assert list(predictions['class_names']) == ['Effusion', 'Hernia']

  with open(path[:-len('.json')] + '.csv', encoding='utf-8') as f:
    (row,) = list(csv.DictReader(f))
  assert float(row['value']) == 0.75 and row['seed'] == '2'
  assert float(row['test_auc_Effusion']) == 0.75
  assert row['test_auc_Hernia'] == ''


def test_new_fields_round_trip_and_dice_counts_ci(tmp_path):
  rng = np.random.default_rng(0)
  truth = (rng.random((40, 64)) < 0.3) & (np.arange(40) % 2 == 1)[:, None]
  pred = truth ^ (rng.random((40, 64)) < 0.1)
  counts = np.stack([(pred & truth).sum(1), pred.sum(1), truth.sum(1)], 1)
  dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
  floors = {'dice': 0.0, 'dice_positive': None, 'dice_per_image': 0.5}
  fields = dict(floors=floors, val_floors=floors, encoder=_RANDOM,
                selection_metric='dice', label_subset={
                    'mode': 'fixed', 'seed': 0, 'positive_per_class': True,
                    'size': 12, 'added_for_positives': 2})
  record = records.make_record('siim', 'frozen', 0.3, 1, None,
                               {'dice': dice, 'dice_positive': 0.7}, **fields)
  path = record_files.write_run_record(str(tmp_path), record,
                                  {'dice_counts': counts})
  (loaded,) = record_files.load_run_records(str(tmp_path))
  assert {k: loaded[k] for k in fields} == fields
  ci, source = summary_lib.run_ci(loaded, 300, 0.05, 0)
  assert source == 'bootstrap' and ci[0] < dice < ci[1] < ci[0] + 0.3
  with open(path[:-len('.json')] + '.csv', encoding='utf-8') as f:
    (row,) = list(csv.DictReader(f))
  assert [row[k] for k in (
      'floor_dice_per_image', 'encoder_context_blocks', 'encoder_bn_statistics',
      'label_subset_mode', 'selection_metric', 'test_dice_positive')] == [
          '0.5', 'keep', 're-estimated', 'fixed', 'dice', '0.7']


def test_invalid_records_name_file_and_field(tmp_path):
  good = {'task': 'rsna', 'protocol': 'frozen', 'label_fraction': 0.3,
          'seed': 0, 'checkpoint': None, 'metric_name': 'accuracy',
          'test': {'accuracy': 0.8}}
  cases = [
      ({k: v for k, v in good.items() if k != 'seed'}, 'seed'),
      ({**good, 'task': 'mimic'}, 'unknown task'),
      ({**good, 'label_fraction': 1.5}, 'label_fraction'),
      ({**good, 'metric_name': 'f1'}, 'metric_name'),
      ({**good, 'test': {'mean_auc': 0.7}}, 'test.accuracy'),
      ({**good, 'ci95': [0.1]}, 'ci95'),
      ({**good, 'floors': {'dice': 'none'}}, 'floors.dice'),
      ({**good, 'val_floors': {'dice_per_image': 1.5}},
       'val_floors.dice_per_image'),
      ({**good, 'floors': {'iou': 0.0}}, 'floors.iou'),
      ({**good, 'encoder': 'keep'}, 'field encoder'),
      ({**good, 'encoder': {**_KEPT, 'context_blocks': 'all'}},
       'encoder.context_blocks'),
      ({**good, 'encoder': {'context_blocks': 'drop'}},
       'encoder.bn_statistics'),
      ({**good, 'encoder': {**_RANDOM, 'bn_images': '1600'}},
       'encoder.bn_images'),
      ({**good, 'label_subset': {'mode': 'random'}}, 'label_subset.mode'),
      ({**good, 'selection_metric': ['auc']}, 'selection_metric'),
  ]
  for i, (record, field) in enumerate(cases):
    path = tmp_path / f'case{i}' / 'run_record_bad.json'
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=re.escape(str(path))) as error:
      record_files.load_run_records(str(path.parent))
    assert field in str(error.value)


def test_load_errors_name_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
    record_files.load_run_records(str(tmp_path))
  missing = str(tmp_path / 'nope')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    record_files.load_run_records(missing)


def test_duplicate_runs_are_rejected(tmp_path):
  record = records.make_record('siim', 'frozen', 0.3, 0, None, {'dice': 0.4})
  record_files.write_run_record(str(tmp_path / 'a'), record)
  record_files.write_run_record(str(tmp_path / 'b'), record)
  with pytest.raises(ValueError, match='two records'):
    report.build_report([str(tmp_path)], str(tmp_path / 'out'),
                            plots=False)


# --- the report end to end ---------------------------------------------------

# Hand-made results: run set -> (task, protocol, fraction) -> per-seed values.
_NIH_A = {('finetune', 0.01): [0.61, 0.64, 0.62],
          ('finetune', 0.1): [0.70, 0.73, 0.71],
          ('frozen', 0.01): [0.58, 0.59, 0.60]}
_NIH_B = {('finetune', 0.01): [0.60, 0.62, 0.615],
          ('finetune', 0.1): [0.69, 0.70, 0.705]}
# SIIM: (global, positive-image, per-image Dice) per seed; per-image floors
# differ by seed so the floor row must be their mean (0.51).
_SIIM_A = {('finetune', 1.0): [(0.55, 0.40, 0.70), (0.57, 0.44, 0.74)]}
_SIIM_B = {('finetune', 1.0): [(0.50, 0.35, 0.66), (0.53, 0.42, 0.70)]}
_PER_IMAGE_FLOORS = (0.50, 0.52)
_RSNA_A = {('frozen', 0.01): [(0.78, 0.84), (0.80, 0.87)]}  # (accuracy, AUC)
_CLASSES = ['Atelectasis', 'Effusion']
_KEPT = {'context_blocks': 'keep', 'bn_statistics': 'checkpoint',
         'bn_batches': None, 'bn_images': None, 'random_init': False}
_RANDOM = {'context_blocks': 'keep', 'bn_statistics': 're-estimated',
           'bn_batches': 50, 'bn_images': 1600, 'random_init': True}


def _write_run_set(root, nih, siim, with_predictions, rsna=(), fixed=True, encoder=None):
  rng = np.random.default_rng(len(str(root)))
  protocol_fields = lambda seed, metric: dict(
      encoder=encoder or (_KEPT if fixed else _RANDOM), selection_metric=metric,
      label_subset={'mode': 'fixed' if fixed else 'per_seed',
                    'seed': 0 if fixed else seed, 'positive_per_class': fixed,
                    'size': 10, 'added_for_positives': 3 * fixed})
  for (protocol, fraction), values in nih.items():
    for seed, value in enumerate(values):
      per_class = {'Atelectasis': value - 0.01, 'Effusion': value + 0.01}
      record = records.make_record(
          'nih', protocol, fraction, seed, f'{root}/ckpt',
          {'mean_auc': value, 'per_class_auc': per_class}, best_epoch=seed,
          **protocol_fields(seed, 'mean_auc'))
      predictions = None
      if with_predictions and seed == 0:
        labels = (rng.random((300, 2)) < 0.4).astype(np.int64)
        scores = rng.random((300, 2)) + 0.5 * labels
        predictions = {'labels': labels, 'scores': scores,
                       'class_names': _CLASSES}
      record_files.write_run_record(
          str(root / f'{protocol}_{fraction}_{seed}'), record, predictions)
  for (protocol, fraction), values in siim.items():
    for seed, dice in enumerate(values):
      floors = dict(dice=0.0, dice_positive=0.0,
                    dice_per_image=_PER_IMAGE_FLOORS[seed])
      record = records.make_record(
          'siim', protocol, fraction, seed, None,
          dict(zip(('dice', 'dice_positive', 'dice_per_image'), dice)),
          floors=floors, val_floors=floors, **protocol_fields(seed, 'dice'))
      record_files.write_run_record(str(root), record)
  for (protocol, fraction), values in dict(rsna).items():
    for seed, (accuracy, auc) in enumerate(values):
      record = records.make_record(
          'rsna', protocol, fraction, seed, None,
          {'accuracy': accuracy, 'mean_auc': auc},
          **protocol_fields(seed, 'accuracy'))
      record_files.write_run_record(str(root), record)


def _table_after(markdown, heading_start):
  """Rows (lists of cells) of the first table after a heading."""
  section = markdown.split(heading_start, 1)[1].split('\n#', 1)[0]
  return [[c.strip() for c in line.strip().strip('|').split('|')]
          for line in section.splitlines()
          if line.startswith('|') and not line.startswith('|---')]


def _cell_numbers(cell):
  return [float(x) for x in re.findall(r'\d+\.\d+', cell)]


@pytest.fixture(scope='module')
def report_outputs(tmp_path_factory):
  root = tmp_path_factory.mktemp('runs')
  _write_run_set(root / 'mlvicx', _NIH_A, _SIIM_A, with_predictions=True,
                 rsna=_RSNA_A)
  _write_run_set(root / 'baseline', _NIH_B, _SIIM_B, with_predictions=False,
                 fixed=False)
  out = root / 'report'
  result = subprocess.run(
      [sys.executable, '-m', 'mlvicx_jax.report',
       f'--runs={root / "mlvicx"}', '--runs', str(root / 'baseline'),
       f'--out={out}', '--n_boot=200'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  return root, out


def test_report_tables_match_numpy(report_outputs):
  _, out = report_outputs
  markdown = (out / 'report.md').read_text(encoding='utf-8')
  table = _table_after(markdown, '## NIH ChestX-ray14, fine-tune')
  header = table[0]
  rows = {row[0]: row for row in table[1:]}
  assert header[1:] == ['1%', '10%', '30%', '100%']
  assert rows['MLVICX (paper)'][1:] == ['0.642', '0.733', '0.763', '0.790']
  for run_set, values in (('mlvicx', _NIH_A), ('baseline', _NIH_B)):
    row = rows[f'{run_set} (reproduced)']
    for fraction, column in ((0.01, 1), (0.1, 2)):
      seeds = values[('finetune', fraction)]
      mean, sd, n = _cell_numbers(row[column])[0], _cell_numbers(
          row[column])[1], len(seeds)
      assert mean == pytest.approx(np.mean(seeds), abs=5e-4)
      assert sd == pytest.approx(np.std(seeds, ddof=1), abs=5e-4)
      assert f'(n={n})' in row[column]
    assert row[3] == row[4] == '–'  # no 30% or 100% runs

  frozen = _table_after(markdown, '## NIH ChestX-ray14, frozen')
  frozen_rows = {row[0]: row for row in frozen[1:]}
  assert frozen_rows['MLVICX (paper)'][1] == '0.601'
  assert 'baseline (reproduced)' not in frozen_rows

  per_class = _table_after(markdown, 'Per-class AUC: NIH ChestX-ray14, '
                           'fine-tune, mlvicx')
  effusion = {row[0]: row for row in per_class[1:]}['Effusion']
  assert _cell_numbers(effusion[1])[0] == pytest.approx(
      np.mean(_NIH_A[('finetune', 0.01)]) + 0.01, abs=5e-4)


def test_report_summary_ttests_and_cis(report_outputs):
  root, out = report_outputs
  summary = json.loads((out / 'summary.json').read_text(encoding='utf-8'))
  cell = next(c for c in summary['cells']
              if (c['run_set'], c['task'], c['protocol'], c['fraction']) ==
              ('mlvicx', 'nih', 'frozen', 0.01))
  assert cell['mean'] == pytest.approx(np.mean(_NIH_A[('frozen', 0.01)]))
  assert cell['sd'] == pytest.approx(np.std(_NIH_A[('frozen', 0.01)], ddof=1))
  assert cell['paper'] == 0.601

  (tests,) = summary['paired_tests'].values()
  by_fraction = {(t['protocol'], t['fraction']): t for t in tests
                 if t['task'] == 'nih'}
  for key in (('finetune', 0.01), ('finetune', 0.1)):
    reference = stats.ttest_rel(_NIH_A[key], _NIH_B[key])
    assert by_fraction[key]['n'] == 3
    assert by_fraction[key]['t'] == pytest.approx(reference.statistic)
    assert by_fraction[key]['p'] == pytest.approx(reference.pvalue)
  assert ('frozen', 0.01) not in by_fraction  # baseline has no frozen runs

  # Bootstrap CIs were computed for the runs that saved predictions.
  with_ci = [r for r in summary['runs'] if r['ci95'] is not None]
  assert {(r['run_set'], r['seed']) for r in with_ci} == {('mlvicx', 0)}
  for run in with_ci:
    (path,) = root.glob(f'mlvicx/{run["protocol"]}_{run["fraction"]}_0/'
                        '*_predictions.npz')
    data = np.load(path)
    point = np.mean([sk_metrics.roc_auc_score(data['labels'][:, k],
                                              data['scores'][:, k])
                     for k in range(2)])
    assert run['ci95'][0] <= point <= run['ci95'][1]
    assert run['ci95'][1] - run['ci95'][0] < 0.2

  with open(out / 'runs.csv', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3 * 3 + 2 + 2 + 3 * 2 + 2


def test_report_writes_pngs(report_outputs):
  _, out = report_outputs
  pngs = sorted(p.name for p in out.glob('*.png'))
  assert 'mean_auc_vs_fraction_nih.png' in pngs
  assert 'dice_vs_fraction_siim.png' in pngs
  assert any(p.startswith('roc_mlvicx_nih_finetune_f0.01_seed0') for p in pngs)
  for name in pngs:
    data = (out / name).read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_report_cli_names_a_run_dir_without_records(tmp_path):
  empty = tmp_path / 'empty_runs'
  empty.mkdir()
  result = subprocess.run(
      [sys.executable, '-m', 'mlvicx_jax.report', f'--runs={empty}',
       '--plots=false'],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0
  assert str(empty) in result.stderr


def test_report_siim_three_dice_rsna_and_protocol(report_outputs):
  _, out = report_outputs
  markdown = (out / 'report.md').read_text(encoding='utf-8')
  siim = markdown.split('## SIIM-ACR Pneumothorax: Dice\n', 1)[1]
  note = siim.split('\n#', 1)[0]
  for phrase in ('The global Dice', "stands beside the paper's Table III",
                 'does not define its Dice', 'gives 0.50 to a model',
                 '(0.42–0.45)', 'does not depend on the balance'):
    assert phrase in note
  floors = {'dice': 0.0, 'dice_positive': 0.0,
            'dice_per_image': np.mean(_PER_IMAGE_FLOORS)}
  for k, (metric, source) in enumerate((
      ('Dice (global)', 'beside paper Table III'),
      ('Dice (positive images)', 'not in the paper'),
      ('Dice (per image)', 'not in the paper'))):
    table = _table_after(siim, f'### SIIM-ACR Pneumothorax: {metric}, {source}')
    rows = {row[0]: row for row in table[1:]}
    column = table[0].index('fine-tune 100%')
    assert rows.get('MLVICX (paper)', [''] * 4)[column] == (
        '0.59 ± 0.01' if k == 0 else '')  # Table III, fine-tune, all labels
    key = list(floors)[k]
    assert float(rows['empty prediction (floor)'][column]) == pytest.approx(
        floors[key], abs=5e-4)
    for run_set, values in (('mlvicx', _SIIM_A), ('baseline', _SIIM_B)):
      seeds = [v[k] for v in values[('finetune', 1.0)]]
      assert _cell_numbers(rows[f'{run_set} (reproduced)'][column])[:2] == [
          pytest.approx(np.mean(seeds), abs=5e-4),
          pytest.approx(np.std(seeds, ddof=1), abs=5e-4)]
  assert siim.index('Dice (global), beside') < siim.index('(positive images)')

  accuracy = _table_after(markdown, '## RSNA Pneumonia, frozen (linear probe): '
                          'accuracy (paper Table II)')
  auc = _table_after(markdown, '## RSNA Pneumonia, frozen (linear probe): '
                     'mean AUC (not reported in the paper)')
  assert {r[0]: r for r in accuracy}['MLVICX (paper)'][1] == '0.783'
  assert [r[0] for r in auc[1:]] == ['mlvicx (reproduced)']
  for table, k in ((accuracy, 0), (auc, 1)):
    seeds = [v[k] for v in _RSNA_A[('frozen', 0.01)]]
    cell = {r[0]: r for r in table}['mlvicx (reproduced)'][1]
    assert _cell_numbers(cell)[0] == pytest.approx(np.mean(seeds), abs=5e-4)

  lines = markdown.splitlines()
  for line in (
      '- **mlvicx**: encoder: context blocks kept, BatchNorm statistics from '
      'the checkpoint',
      '- **baseline**: encoder: random initialisation (with context blocks), '
      'BatchNorm statistics re-estimated on 1,600 downstream training images '
      '(50 batches)',
      '- **mlvicx**: label subset: one fixed subset for every seed (subset '
      'seed 0), at least one positive per class where the split has one (3 images '
      'added at most)',
      '- **baseline**: label subset: a new subset per seed',
      '- **mlvicx**: selection: early stopping on validation accuracy [rsna; '
      '2 of 13 runs]'):
    assert lines.count(line) == 1, line
  assert lines.index(line) < lines.index('## NIH ChestX-ray14, fine-tune: '
                                         'mean AUC (paper Table I)')

  summary = json.loads((out / 'summary.json').read_text(encoding='utf-8'))
  (tests,) = summary['paired_tests'].values()
  (test,) = [t for t in tests if t['metric'] == 'dice_positive']
  reference = stats.ttest_rel(*([v[1] for v in s[('finetune', 1.0)]]
                                for s in (_SIIM_A, _SIIM_B)))
  assert test['t'] == pytest.approx(reference.statistic)
  assert test['p'] == pytest.approx(reference.pvalue)


def test_each_method_is_reported_beside_its_own_paper_row(tmp_path):
  """A BYOL-pretrained run set gets the paper's BYOL numbers (Tables I-III), not MLVICX's."""
  nih = {('frozen', 0.3): [0.65, 0.66, 0.64], ('finetune', 1.0): [0.74, 0.75, 0.76]}
  siim = {('frozen', 0.3): [(0.30, 0.40, 0.50)] * 2}
  _write_run_set(tmp_path / 'byol', nih, siim, with_predictions=False,
                 encoder=dict(_KEPT, method='byol'))
  _write_run_set(tmp_path / 'mlvicx', nih, {}, with_predictions=False,
                 encoder=dict(_KEPT, method='mlvicx'))
  out = tmp_path / 'report'
  report.build_report([str(tmp_path / 'byol'), str(tmp_path / 'mlvicx')], str(out),
                          n_boot=50, plots=False)
  summary = json.loads((out / 'summary.json').read_text(encoding='utf-8'))
  papers = {(c['run_set'], c['protocol'], c['fraction']): c['paper']
            for c in summary['cells'] if c['task'] == 'nih'}
  byol_frozen_30 = 0.663   # paper Table II, NIH frozen 30%, BYOL column
  assert papers[('byol', 'frozen', 0.3)] == byol_frozen_30
  assert papers[('byol', 'finetune', 1.0)] == 0.748       # Table I, BYOL, 100%
  assert papers[('mlvicx', 'frozen', 0.3)] == 0.691       # Table II, MLVICX
  markdown = (out / 'report.md').read_text(encoding='utf-8')
  frozen = {row[0]: row for row in _table_after(markdown, '## NIH ChestX-ray14, frozen')[1:]}
  assert frozen['BYOL (paper)'][3] == '0.663' and frozen['MLVICX (paper)'][3] == '0.691'
  assert 'SimCLR (paper)' not in frozen  # only measured methods, unless --all_methods
  dice = _table_after(markdown, '### SIIM-ACR Pneumothorax: Dice (global)')
  assert any(row[0] == 'BYOL (paper)' for row in dice)
  assert 'pretrained with BYOL' in markdown
  with pytest.raises(ValueError, match='encoder.method'):
    records.make_record('nih', 'frozen', 0.3, 0, None, {'mean_auc': 0.6},
                        encoder=dict(_KEPT, method='dino'))


# --- calibration, operating points and synthetic data ---------------------------------

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
                                 synthetic_data=synthetic, encoder=_KEPT)
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
  table = _table_after(markdown, f'### Calibration: {setting}')
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
      mean, sd = _cell_numbers(rows[name][1 + j])
      assert mean == pytest.approx(values[:, j].mean(), abs=5e-4)
      assert sd == pytest.approx(values[:, j].std(ddof=1), abs=5e-4)
    assert rows[name][4] == (f"{int(values[0, 3]):,}" if values[0, 3] == values[1, 3] else
                             f"{int(values[:, 3].min()):,}–{int(values[:, 3].max()):,}")
  section = markdown.split(f'### Calibration: {setting}', 1)[1].split('\n#', 1)[0]
  assert 'On 200 test images, masked labels left out; mean ± sd over 2 seeds.' in section

  p = runs[0]
  for rule, title in (('youden', "Youden's J"), ('sensitivity', 'sensitivity ≥ 0.9')):
    heading = f'### Operating point, {title}: {setting}, seed 0 of 2'
    table = _table_after(markdown, heading)
    assert table[0] == ['class', 'threshold', 'sensitivity', 'specificity', 'PPV', 'NPV',
                        'F1', 'test positives / labelled']
    rows = {row[0]: row for row in table[1:]}
    for k, name in enumerate(_CAL_CLASSES[:2]):
      expected, (positives, labelled) = _sk_operating_point(
          p['val_labels'][:, k], p['val_scores'][:, k], p['labels'][:, k],
          p['scores'][:, k], rule)
      for j, value in enumerate(expected):
        numbers = _cell_numbers(rows[name][1 + j])
        assert numbers[0] == pytest.approx(value, abs=5e-4)
        if j:  # a rate with its bootstrap interval around it
          assert len(numbers) == 3 and numbers[1] - 5e-4 <= numbers[0] <= numbers[2] + 5e-4
      expected_ci = _loop_sensitivity_ci(p['labels'][:, k], p['scores'][:, k], expected[0],
                                         200)
      assert _cell_numbers(rows[name][2])[1:] == pytest.approx(expected_ci, abs=5e-4)
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
  assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
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
  _write_run_set(tmp_path / 'synth', {('finetune', 0.1): [0.78, 0.79]}, {},
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
  fine_tune = _table_after(markdown, '## NIH ChestX-ray14, fine-tune: mean AUC (synthetic data)')
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
  _write_run_set(tmp_path / 'real', {('frozen', 1.0): [0.70, 0.71]}, {},
                 with_predictions=False)
  _write_calibration_set(tmp_path / 'synth', synthetic=True)
  titles, papers = _figure_titles(monkeypatch)
  out = tmp_path / 'report'
  report.build_report([str(tmp_path / 'real'), str(tmp_path / 'synth')], str(out),
                      n_boot=0)
  markdown = (out / 'report.md').read_text(encoding='utf-8')
  table = _table_after(markdown, '## NIH ChestX-ray14, frozen (linear probe): mean AUC '
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
  for i, (bad, message) in enumerate(cases):
    path = tmp_path / f'case{i}' / 'run_record_bad.json'
    path.parent.mkdir()
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=re.escape(str(path))) as error:
      record_files.load_run_records(str(path.parent))
    assert message in str(error.value)
