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
import report_runs
from mlvicx_jax.evaluate import record_files
from mlvicx_jax.evaluate import records
from mlvicx_jax import report
from mlvicx_jax.report import summary as summary_lib

REPO = pathlib.Path(conftest.REPO)

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
  fields = dict(floors=floors, val_floors=floors, encoder=report_runs.RANDOM,
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
      ({**good, 'encoder': {**report_runs.KEPT, 'context_blocks': 'all'}},
       'encoder.context_blocks'),
      ({**good, 'encoder': {'context_blocks': 'drop'}},
       'encoder.bn_statistics'),
      ({**good, 'encoder': {**report_runs.RANDOM, 'bn_images': '1600'}},
       'encoder.bn_images'),
      ({**good, 'label_subset': {'mode': 'random'}}, 'label_subset.mode'),
      ({**good, 'selection_metric': ['auc']}, 'selection_metric'),
  ]
  report_runs.assert_each_is_refused_by_name(tmp_path, cases)


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
_RSNA_A = {('frozen', 0.01): [(0.78, 0.84), (0.80, 0.87)]}  # (accuracy, AUC)


@pytest.fixture(scope='module')
def report_outputs(tmp_path_factory):
  root = tmp_path_factory.mktemp('runs')
  report_runs.write_run_set(root / 'mlvicx', _NIH_A, _SIIM_A, with_predictions=True,
                            rsna=_RSNA_A)
  report_runs.write_run_set(root / 'baseline', _NIH_B, _SIIM_B, with_predictions=False,
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
  table = report_runs.table_after(markdown, '## NIH ChestX-ray14, fine-tune')
  header = table[0]
  rows = {row[0]: row for row in table[1:]}
  assert header[1:] == ['1%', '10%', '30%', '100%']
  assert rows['MLVICX (paper)'][1:] == ['0.642', '0.733', '0.763', '0.790']
  for run_set, values in (('mlvicx', _NIH_A), ('baseline', _NIH_B)):
    row = rows[f'{run_set} (reproduced)']
    for fraction, column in ((0.01, 1), (0.1, 2)):
      seeds = values[('finetune', fraction)]
      mean, sd = report_runs.cell_numbers(row[column])[:2]
      n = len(seeds)
      assert mean == pytest.approx(np.mean(seeds), abs=5e-4)
      assert sd == pytest.approx(np.std(seeds, ddof=1), abs=5e-4)
      assert f'(n={n})' in row[column]
    assert row[3] == row[4] == '–'  # no 30% or 100% runs

  frozen = report_runs.table_after(markdown, '## NIH ChestX-ray14, frozen')
  frozen_rows = {row[0]: row for row in frozen[1:]}
  assert frozen_rows['MLVICX (paper)'][1] == '0.601'
  assert 'baseline (reproduced)' not in frozen_rows

  per_class = report_runs.table_after(markdown, 'Per-class AUC: NIH ChestX-ray14, '
                           'fine-tune, mlvicx')
  effusion = {row[0]: row for row in per_class[1:]}['Effusion']
  assert report_runs.cell_numbers(effusion[1])[0] == pytest.approx(
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
    assert data.startswith(report_runs.PNG_SIGNATURE) and len(data) > 1000


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
            'dice_per_image': np.mean(report_runs.PER_IMAGE_FLOORS)}
  for k, (metric, source) in enumerate((
      ('Dice (global)', 'beside paper Table III'),
      ('Dice (positive images)', 'not in the paper'),
      ('Dice (per image)', 'not in the paper'))):
    table = report_runs.table_after(siim, f'### SIIM-ACR Pneumothorax: {metric}, {source}')
    rows = {row[0]: row for row in table[1:]}
    column = table[0].index('fine-tune 100%')
    assert rows.get('MLVICX (paper)', [''] * 4)[column] == (
        '0.59 ± 0.01' if k == 0 else '')  # Table III, fine-tune, all labels
    key = list(floors)[k]
    assert float(rows['empty prediction (floor)'][column]) == pytest.approx(
        floors[key], abs=5e-4)
    for run_set, values in (('mlvicx', _SIIM_A), ('baseline', _SIIM_B)):
      seeds = [v[k] for v in values[('finetune', 1.0)]]
      assert report_runs.cell_numbers(rows[f'{run_set} (reproduced)'][column])[:2] == [
          pytest.approx(np.mean(seeds), abs=5e-4),
          pytest.approx(np.std(seeds, ddof=1), abs=5e-4)]
  assert siim.index('Dice (global), beside') < siim.index('(positive images)')

  accuracy = report_runs.table_after(markdown, '## RSNA Pneumonia, frozen (linear probe): '
                          'accuracy (paper Table II)')
  auc = report_runs.table_after(markdown, '## RSNA Pneumonia, frozen (linear probe): '
                     'mean AUC (not reported in the paper)')
  assert {r[0]: r for r in accuracy}['MLVICX (paper)'][1] == '0.783'
  assert [r[0] for r in auc[1:]] == ['mlvicx (reproduced)']
  for table, k in ((accuracy, 0), (auc, 1)):
    seeds = [v[k] for v in _RSNA_A[('frozen', 0.01)]]
    cell = {r[0]: r for r in table}['mlvicx (reproduced)'][1]
    assert report_runs.cell_numbers(cell)[0] == pytest.approx(np.mean(seeds), abs=5e-4)

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
  report_runs.write_run_set(tmp_path / 'byol', nih, siim, with_predictions=False,
                            encoder=dict(report_runs.KEPT, method='byol'))
  report_runs.write_run_set(tmp_path / 'mlvicx', nih, {}, with_predictions=False,
                            encoder=dict(report_runs.KEPT, method='mlvicx'))
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
  frozen = report_runs.table_after(markdown, '## NIH ChestX-ray14, frozen')
  frozen = {row[0]: row for row in frozen[1:]}
  assert frozen['BYOL (paper)'][3] == '0.663' and frozen['MLVICX (paper)'][3] == '0.691'
  assert 'SimCLR (paper)' not in frozen  # only measured methods, unless --all_methods
  dice = report_runs.table_after(markdown, '### SIIM-ACR Pneumothorax: Dice (global)')
  assert any(row[0] == 'BYOL (paper)' for row in dice)
  assert 'pretrained with BYOL' in markdown
  with pytest.raises(ValueError, match='encoder.method'):
    records.make_record('nih', 'frozen', 0.3, 0, None, {'mean_auc': 0.6},
                        encoder=dict(report_runs.KEPT, method='dino'))
