"""Transfer evaluation: the numbers against scikit-learn, the wiring against the table.

References: scikit-learn's roc_auc_score on the unmasked rows; a bootstrap
written out here with scikit-learn and numpy's generator (the documented
resamples: A with the seed, B with seed + 1, skipped where a finding comes
out single-valued); the shared-findings table read directly; labels and
uncertain flags read straight from the builds; the saved classifier run on
the tested build's images.
"""
import os

import jax
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from conftest import load_config
from helpers import split_images
from mlvicx_jax import evaluate
from mlvicx_jax.data import info
from mlvicx_jax.data import shared_findings
from mlvicx_jax.evaluate import classification
from mlvicx_jax.evaluate import data as data_lib
from mlvicx_jax.evaluate import record_files
from mlvicx_jax.evaluate import transfer

N_BOOT = 40


def sklearn_auc(labels, scores):
  keep = ~np.isnan(labels)
  y = labels[keep]
  return sk_metrics.roc_auc_score(y, scores[keep]) if 0 < y.sum() < len(y) else np.nan


def reference_draws(labels, scores, seed):
  """Mean sklearn AUC over the columns of each resample; NaN where a column is one-valued."""
  rng = np.random.default_rng(seed)
  n, draws = len(labels), []
  for _ in range(N_BOOT):
    idx = rng.integers(0, n, size=n)
    aucs = [sklearn_auc(labels[idx, k], scores[idx, k]) for k in range(labels.shape[1])]
    draws.append(np.nan if np.isnan(aucs).any() else np.mean(aucs))
  return np.array(draws)


def percentiles(draws):
  draws = draws[np.isfinite(draws)]
  return list(np.percentile(draws, [2.5, 97.5]))


def masked_pair(seed=0):
  """A's and B's (labels, scores) of 4 findings; B's uncertain entries masked with numpy."""
  rng = np.random.default_rng(seed)
  in_labels = (rng.random((120, 4)) < 0.3).astype(np.float64)
  in_scores = np.round(rng.random((120, 4)) + 0.5 * in_labels, 2)
  stored = (rng.random((90, 4)) < 0.3).astype(np.float64)
  stored[:, 3] = (rng.random(90) < 0.1)  # finding 3: every positive is uncertain below
  uncertain = rng.random((90, 4)) < 0.25
  uncertain[:, 3] |= stored[:, 3] == 1
  out_labels = np.where(uncertain, np.nan, stored)
  out_scores = np.round(rng.random((90, 4)) + 0.2 * stored, 2)
  return in_labels, in_scores, out_labels, out_scores, stored, uncertain


def test_pair_fields_match_sklearn_and_a_written_out_bootstrap():
  in_labels, in_scores, out_labels, out_scores, stored, uncertain = masked_pair()
  findings = ['a', 'b', 'c', 'd']
  got = transfer.pair_fields(findings, in_labels, in_scores, out_labels, out_scores, N_BOOT)
  seed = transfer.BOOTSTRAP_SEED
  in_auc = [sklearn_auc(in_labels[:, k], in_scores[:, k]) for k in range(4)]
  # B's AUC on the rows whose label is not uncertain (the numpy mask), never on the stored 0.
  out_auc = [sklearn_auc(stored[~uncertain[:, k], k], out_scores[~uncertain[:, k], k])
             for k in range(4)]
  assert np.isnan(out_auc[3]) and np.all(np.isfinite(out_auc[:3]))
  assert got['in_mean'] == [True, True, True, False]
  both = [0, 1, 2]
  for k, name in enumerate(findings):
    side_in = got['in_domain']['per_finding'][name]
    side_out = got['transferred']['per_finding'][name]
    assert side_in['auc'] == pytest.approx(in_auc[k], abs=1e-12)
    assert side_out['labelled'] == int((~uncertain[:, k]).sum())
    assert side_out['positives'] == int((stored[:, k] * ~uncertain[:, k]).sum())
    if k in both:
      assert side_out['auc'] == pytest.approx(out_auc[k], abs=1e-12)
      assert got['drop']['per_finding'][name]['value'] == pytest.approx(
          out_auc[k] - in_auc[k], abs=1e-12)
      a = reference_draws(in_labels[:, [k]], in_scores[:, [k]], seed)
      b = reference_draws(out_labels[:, [k]], out_scores[:, [k]], seed + 1)
      np.testing.assert_allclose(side_in['ci95'], percentiles(a), atol=1e-9)
      np.testing.assert_allclose(side_out['ci95'], percentiles(b), atol=1e-9)
    else:
      assert side_out['auc'] is None or np.isnan(side_out['auc'])
      assert side_out['ci95'] is None and got['drop']['per_finding'][name]['value'] is None
  assert got['in_domain']['mean_auc'] == pytest.approx(np.mean([in_auc[k] for k in both]))
  assert got['transferred']['mean_auc'] == pytest.approx(np.mean([out_auc[k] for k in both]))
  assert got['drop']['mean_auc'] == pytest.approx(
      got['transferred']['mean_auc'] - got['in_domain']['mean_auc'])
  a = reference_draws(in_labels[:, both], in_scores[:, both], seed)
  b = reference_draws(out_labels[:, both], out_scores[:, both], seed + 1)
  np.testing.assert_allclose(got['in_domain']['ci95'], percentiles(a), atol=1e-9)
  np.testing.assert_allclose(got['transferred']['ci95'], percentiles(b), atol=1e-9)
  a, b = a[np.isfinite(a)], b[np.isfinite(b)]  # the k-th kept draw of B minus that of A
  count = min(len(a), len(b))
  np.testing.assert_allclose(got['drop']['ci95'], percentiles(b[:count] - a[:count]),
                             atol=1e-9)


# --- the :smoke config in process ---------------------------------------------------------


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  """configs/eval/transfer.py:smoke as the command runs it: synthetic builds, then the runs."""
  from mlvicx_jax.evaluate import __main__ as program  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('transfer') / 'out')
  config = load_config('configs/eval/transfer.py', 'smoke')
  program.synthetic_builds(config, workdir)
  return config, workdir, evaluate.run(config, workdir)


def _stored(data_dir, dataset, split):
  """{file name: (labels, uncertain or zeros)} as stored, and the build's class names."""
  from mlvicx_jax.data import sources  # pylint: disable=g-import-not-at-top
  source = sources.data_source(data_dir, dataset, split)
  rows = {}
  for i in range(len(source)):
    r = source[i]
    label = np.asarray(r['label'], np.float64)
    rows[r['file_name'].decode()] = (label, np.asarray(r.get('uncertain', np.zeros_like(label)),
                                                       bool))
  return rows, sources.class_names(data_dir, dataset)


def test_smoke_scores_the_saved_classifier_on_both_test_splits(smoke):
  config, workdir, results = smoke
  (run,) = [r for r in results if r.get('kind') != 'transfer']
  pairs = {r['test_on']: r for r in results if r.get('kind') == 'transfer'}
  assert run['task'] == 'nih' and set(pairs) == {'chexpert', 'padchest'}
  model, variables = classification.restore_classifier(run['model'])
  for test_on, record in pairs.items():
    predictions = record_files.load_predictions(record)
    table = {f.name: f.names for f in shared_findings.FINDINGS
             if 'nih' in f.names and test_on in f.names}
    assert list(record['findings']) == [c for c in table if c in record['findings']]
    assert list(predictions['class_names']) == list(record['findings'])
    # Scores: the classifier's output for NIH's class of each finding, on B's images.
    data = data_lib.open_task_data(config.data_dir, test_on, ('test',))
    images, _ = split_images(config, data, 'test')
    outputs = np.asarray(jax.nn.sigmoid(model.apply(variables, images, train=False)))
    columns = [info.NIH_CLASSES.index(table[c]['nih']) for c in record['findings']]
    np.testing.assert_allclose(predictions['scores'], outputs[:, columns], atol=1e-5)
    # Labels: B's stored label of each finding's B class; uncertain ones masked (NaN).
    stored, names = _stored(config.data_dir, test_on, 'test')
    b_columns = [list(names).index(table[c][test_on]) for c in record['findings']]
    expected = np.stack([np.where(stored[f][1], np.nan, stored[f][0])[b_columns]
                         for f in predictions['file_names']])
    np.testing.assert_array_equal(predictions['labels'], expected)
    # Every AUC of the record from the saved predictions, with scikit-learn.
    for part, prefix in (('transferred', ''), ('in_domain', 'in_domain_')):
      labels, scores = predictions[f'{prefix}labels'], predictions[f'{prefix}scores']
      aucs = [sklearn_auc(labels[:, k], scores[:, k]) for k in range(labels.shape[1])]
      for k, finding in enumerate(record['findings']):
        got = record[part]['per_finding'][finding]['auc']
        assert (got is None and np.isnan(aucs[k])) or got == pytest.approx(aucs[k], abs=1e-12)
      kept = [k for k, f in enumerate(record['findings']) if record['findings'][f]['in_mean']]
      assert kept and record[part]['mean_auc'] == pytest.approx(np.mean(np.take(aucs, kept)))
    assert record['label_policy'] == {'train': None,
                                      'test': 'ignore' if test_on == 'chexpert' else None}
    assert record['synthetic_data'] and record['run_record'] == os.path.basename(
        run['_source'])


def test_uncertain_labels_are_read_through_the_test_builds_policy(smoke):
  """CheXpert's test split has no uncertain labels; its validation split shows the reading."""
  config, _, results = smoke
  (record,) = [r for r in results if r.get('test_on') == 'chexpert']
  classes = [v['test_class'] for v in record['findings'].values()]
  data = data_lib.open_task_data(config.data_dir, 'chexpert', ('test',), uncertain='ignore',
                                 classes=classes)
  model, variables = classification.restore_classifier(record['model'])
  predict = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, train=False)))
  _, labels, files = transfer.split_scores(config, data, predict, variables, 'validation')
  stored, names = _stored(config.data_dir, 'chexpert', 'validation')
  columns = [list(names).index(c) for c in classes]
  masks = np.stack([stored[f][1][columns] for f in files])
  assert masks.any()  # there is something to leave out
  expected = np.stack([np.where(stored[f][1], np.nan, stored[f][0])[columns] for f in files])
  np.testing.assert_array_equal(labels, expected)


def test_config_errors_are_named_before_anything_trains(smoke, tmp_path):
  config, _, _ = smoke
  cases = [({'train_on': ('siim',)}, 'config.transfer.train_on'),
           ({'test_on': ('mimic',)}, 'config.transfer.test_on'),
           ({'test_on': ('vinbig',)}, 'vinbig has not been prepared')]
  for change, message in cases:
    bad = config.copy_and_resolve_references()
    bad.transfer.update(change)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      evaluate.run(bad, str(tmp_path / 'out'))
  bad = config.copy_and_resolve_references()
  bad.classes = 'Fibrosis'  # an NIH class CheXpert does not name
  with pytest.raises(ValueError, match='share no finding'):
    evaluate.run(bad, str(tmp_path / 'out'))
  bad.classes, bad.save_model = 'all', False
  with pytest.raises(ValueError, match='config.save_model'):
    evaluate.run(bad, str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out') or not [
      f for f in os.listdir(tmp_path / 'out') if f.startswith('run_record_')]


# --- PadChest as the training build ---------------------------------------------------------


@pytest.fixture(scope='module')
def padchest_to_nih(nih_data_dir, padchest_data_dir, tmp_path_factory):
  """A frozen probe trained on the session's PadChest build, tested on its NIH build.

  The two builds live in different data_dirs; both are linked into one.
  """
  data_dir = tmp_path_factory.mktemp('padchest_nih')
  for dataset, source in (('nih', nih_data_dir), ('padchest', padchest_data_dir)):
    os.symlink(os.path.join(source, dataset), data_dir / dataset)
  config = load_config('configs/eval/transfer.py', 'smoke')
  config.data_dir, config.n_boot = str(data_dir), N_BOOT
  config.transfer.train_on, config.transfer.test_on = ('padchest',), ('nih',)
  workdir = str(tmp_path_factory.mktemp('padchest_nih_out'))
  return config, workdir, evaluate.run(config, workdir)


def test_padchest_to_nih_over_the_shared_findings(padchest_to_nih, tmp_path):
  config, workdir, results = padchest_to_nih
  (run,) = [r for r in results if r.get('kind') != 'transfer']
  (record,) = [r for r in results if r.get('kind') == 'transfer']
  assert run['task'] == 'padchest' and (record['train_on'], record['test_on']) == (
      'padchest', 'nih')
  assert list(run['test']['per_class_auc']) == list(info.PADCHEST_CLASSES)
  # The findings: every row of the table naming both, in its order (NIH Hernia = hiatal hernia).
  table = {f.name: f.names for f in shared_findings.FINDINGS
           if 'padchest' in f.names and 'nih' in f.names}
  assert list(record['findings']) == list(table)
  for finding, names in table.items():
    assert (record['findings'][finding]['train_class'],
            record['findings'][finding]['test_class']) == (names['padchest'], names['nih'])
  predictions = record_files.load_predictions(record)
  # Scores: the PadChest classifier's output for PadChest's class of each finding, on NIH images.
  model, variables = classification.restore_classifier(run['model'])
  data = data_lib.open_task_data(config.data_dir, 'nih', ('test',))
  images, _ = split_images(config, data, 'test')
  outputs = np.asarray(jax.nn.sigmoid(model.apply(variables, images, train=False)))
  columns = [info.PADCHEST_CLASSES.index(table[c]['padchest']) for c in record['findings']]
  np.testing.assert_allclose(predictions['scores'], outputs[:, columns], atol=1e-5)
  # Labels: NIH's stored label of each finding's NIH class, nothing masked (no uncertain labels).
  stored, names = _stored(config.data_dir, 'nih', 'test')
  nih_columns = [list(names).index(table[c]['nih']) for c in record['findings']]
  np.testing.assert_array_equal(predictions['labels'], np.stack(
      [stored[f][0][nih_columns] for f in predictions['file_names']]))
  for part, prefix in (('transferred', ''), ('in_domain', 'in_domain_')):
    labels, scores = predictions[f'{prefix}labels'], predictions[f'{prefix}scores']
    aucs = [sklearn_auc(labels[:, k], scores[:, k]) for k in range(labels.shape[1])]
    kept = [k for k, f in enumerate(record['findings']) if record['findings'][f]['in_mean']]
    assert kept and record[part]['mean_auc'] == pytest.approx(np.mean(np.take(aucs, kept)))
  assert record['label_policy'] == {'train': None, 'test': None}
  # The report's matrix has a PadChest row, titled as the task is everywhere else.
  from mlvicx_jax.report import build  # pylint: disable=g-import-not-at-top
  out = build.build_report([workdir], str(tmp_path / 'report'), plots=False, n_boot=0)
  with open(out['markdown'], encoding='utf-8') as f:
    text = f.read()
  assert '| trained on \\ tested on | PadChest | NIH ChestX-ray14 |' in text
  row = next(line for line in text.splitlines() if line.startswith('| PadChest |'))
  assert f'{record["transferred"]["mean_auc"]:.3f}' in row.split('|')[3]
  assert '#### PadChest -> NIH ChestX-ray14: per finding' in text
