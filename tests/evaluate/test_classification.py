"""The classification harness end to end on synthetic NIH, and its parts.

References are independent of the code under test: scikit-learn metrics,
torch's CosineAnnealingWarmRestarts, a transcription of the documented
sha256 subset rule, forward passes of the saved classifier, and the
checkpoint the run started from (real pretraining statistics, conftest).
"""
import hashlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from conftest import REPO
from helpers import assert_trees_bitwise_equal
from helpers import checkpoint_trunk
from helpers import eval_config
from helpers import numpy_variables
from helpers import save_tiny_checkpoint
from helpers import split_images
from helpers import sub_tree
from mlvicx_jax import checkpoint
from mlvicx_jax import evaluate
from mlvicx_jax import models
from mlvicx_jax import optim
from mlvicx_jax.evaluate import classification
from mlvicx_jax.evaluate import data as data_lib
from mlvicx_jax.evaluate import harness
from mlvicx_jax.evaluate import records

# --- pure parts --------------------------------------------------------------------------


def test_cosine_warm_restarts_matches_torch():
  torch = pytest.importorskip('torch')
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.AdamW([param], lr=3e-3)
  sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=10, T_mult=2,
                                                               eta_min=1e-6)
  expected = []
  for _ in range(75):  # cycles of 10, 20, 40 epochs, then a fourth
    expected.append(opt.param_groups[0]['lr'])
    opt.step()
    sched.step()
  np.testing.assert_allclose(optim.cosine_warm_restarts(75, 3e-3, 1e-6, 10, 2), expected,
                             rtol=1e-9)


def test_bce_loss_ignores_padding_rows():
  logits = np.array([[2.0, -1.0], [0.5, 0.0], [9.0, 9.0]], np.float32)
  labels = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32)
  mask = np.array([True, True, False])
  p = 1 / (1 + np.exp(-logits[:2].astype(np.float64)))
  expected = -np.mean(labels[:2] * np.log(p) + (1 - labels[:2]) * np.log(1 - p))
  np.testing.assert_allclose(classification.bce_loss(logits, labels, mask), expected, rtol=1e-6)


def test_fit_keeps_state_of_best_epoch_and_stops_after_patience():
  scores = [0.3, 0.7, 0.6, 0.7, 0.65, 0.9]
  result = harness.fit(
      0, lambda state, epoch, lr: (state + 1, 0.0),
      lambda state: (scores[state - 1], f'payload {state}'), lrs=[1.0] * 6, patience=3)
  # Epoch 1 is best (0.7; the tie at epoch 3 keeps the earlier one); epochs
  # 2, 3, 4 do not improve, so training stops after epoch 4.
  assert (result.best_epoch, result.stop_epoch) == (1, 4)
  assert result.best_state == 2 and result.best_payload == 'payload 2'
  assert [h['val_score'] for h in result.history] == scores[:5]


def test_rsna_selects_on_accuracy_the_metric_it_reports():
  labels = np.array([[0], [0], [0], [1], [1], [1]], np.float32)
  # Epoch 0 ranks perfectly but thresholds badly; epoch 1 the other way round.
  epochs = [np.array([[0.6], [0.7], [0.8], [0.9], [0.95], [0.99]]),
            np.array([[0.1], [0.2], [0.7], [0.6], [0.8], [0.9]])]
  auc = [sk_metrics.roc_auc_score(labels[:, 0], s[:, 0]) for s in epochs]
  acc = [sk_metrics.accuracy_score(labels[:, 0], s[:, 0] > 0.5) for s in epochs]
  assert auc[0] > auc[1] and acc[1] > acc[0]
  for task, best in (('rsna', 1), ('vinbig', 0)):
    result = harness.fit(0, lambda state, epoch, lr: (state + 1, 0.0),
                         lambda state, t=task: (classification.selection_score(
                             t, labels, epochs[state - 1]), None), lrs=[1.0, 1.0], patience=5)
    assert result.best_epoch == best, task
    assert result.history[0]['val_score'] == pytest.approx((acc if task == 'rsna' else auc)[0])
  # Both metrics are recorded for a binary task.
  summary = classification.summary(labels, epochs[1], ['Pneumonia'])
  assert summary['accuracy'] == pytest.approx(acc[1]) and summary['mean_auc'] == pytest.approx(auc[1])


# --- label subsets -------------------------------------------------------------------------


def _sha_rank(names, seed):
  key = lambda n: (int.from_bytes(hashlib.sha256(f'{seed}:{n}'.encode()).digest()[:8], 'big'), n)
  return sorted(names, key=key)


def _fake_data(n=1000, seed=0):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, 4)) < [0.3, 0.1, 0.003, 0.0]).astype(np.float32)
  data = data_lib.TaskData('', 'nih/s96', ('a', 'b', 'rare', 'absent'),
                           {'train': n, 'validation': 10, 'test': 10})
  data.train_metadata = ([f'img{i:05d}.png' for i in range(n)], labels)  # the cached property
  return data


def _subset_config(**overrides):
  c = ml_collections.ConfigDict(dict(label_subset='fixed', label_subset_seed=0,
                                     positive_per_class=False))
  c.update(overrides)
  return c


def test_label_subsets_fixed_per_seed_and_positive_per_class():
  data = _fake_data()
  names, labels = data.train_metadata
  # 'fixed': one subset for every run seed, the documented prefix of the sha256 ranking.
  fixed = [data_lib.train_subset(_subset_config(), data, 0.01, seed) for seed in (0, 1, 2)]
  expected = sorted(names.index(n) for n in _sha_rank(names, 0)[:10])
  for s in fixed:
    assert list(s.indices) == expected
    assert s.record == {'mode': 'fixed', 'seed': 0, 'positive_per_class': False, 'size': 10,
                        'added_for_positives': 0}
  # 'per_seed': the run seed draws it.
  per_seed = [data_lib.train_subset(_subset_config(label_subset='per_seed'), data, 0.01, seed)
              for seed in (0, 1)]
  assert list(per_seed[1].indices) == sorted(names.index(n) for n in _sha_rank(names, 1)[:10])
  assert list(per_seed[0].indices) != list(per_seed[1].indices)
  # The rare class (3 positives in 1000) has none in the plain 1% subset.
  assert labels[expected, 2].sum() == 0
  guaranteed = data_lib.train_subset(_subset_config(positive_per_class=True), data, 0.01, 0)
  chosen = set(guaranteed.indices)
  for k in range(3):  # every class with a positive in train now has one ...
    assert labels[list(chosen), k].sum() >= 1
  # ... by adding its first-ranked positive, nothing else; the absent class adds nothing.
  ranked = _sha_rank(names, 0)
  additions = {names.index(next(n for n in ranked if labels[names.index(n), k] > 0))
               for k in range(3) if labels[expected, k].sum() == 0}
  assert chosen == set(expected) | additions
  assert guaranteed.record['added_for_positives'] == len(additions) >= 1
  # Still nested across fractions.
  larger = data_lib.train_subset(_subset_config(positive_per_class=True), data, 0.1, 0)
  assert chosen <= set(larger.indices)
  everything = data_lib.train_subset(_subset_config(positive_per_class=True), data, 1.0, 0)
  assert everything.indices is None and everything.size == 1000


# --- end to end ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def nih(pretrained_dir, nih_data_dir, tmp_path_factory):
  return pretrained_dir, nih_data_dir, tmp_path_factory.mktemp('eval')


def nih_config(nih_fixture, **overrides):
  ckpt, data_dir, _ = nih_fixture
  return eval_config('nih', checkpoint=ckpt, data_dir=data_dir, n_boot=20, **overrides)


def test_frozen_probe_end_to_end_writes_records_that_match_its_classifier(nih, monkeypatch):
  workdir = str(nih[2] / 'frozen')
  config = nih_config(nih, protocol='frozen', num_epochs=3)
  records_ = evaluate.run(config, workdir)
  assert len(records_) == 1
  record = records_[0]
  stem = 'run_record_nih_frozen_f1_seed0'
  for suffix in ('.json', '.csv', '_predictions.npz'):
    assert os.path.isfile(os.path.join(workdir, stem + suffix))
  assert record['checkpoint'] == nih[0] and record['feature_cache']
  assert record['encoder'] == {'context_blocks': 'keep', 'bn_statistics': 'checkpoint',
                               'bn_batches': None, 'bn_images': None, 'random_init': False,
                               'method': 'mlvicx'}  # read from the pretraining checkpoint
  assert record['label_subset']['mode'] == 'fixed' and record['selection_metric'] == 'mean_auc'
  assert 0 <= record['best_epoch'] <= record['stop_epoch'] <= 2

  # Metrics vs scikit-learn on the saved predictions.
  pred = np.load(os.path.join(workdir, record['predictions']))
  assert list(pred['class_names'])[:3] == ['Atelectasis', 'Cardiomegaly', 'Effusion']
  labels, scores = pred['labels'], pred['scores']
  assert labels.shape == scores.shape == (record['num_examples']['test'], 14)
  for k, name in enumerate(pred['class_names']):
    auc = record['test']['per_class_auc'][name]
    if 0 < labels[:, k].sum() < len(labels):
      assert auc == pytest.approx(sk_metrics.roc_auc_score(labels[:, k], scores[:, k]), abs=1e-9)
    else:
      assert np.isnan(auc)

  # The cached-feature probe equals the saved classifier run on the test images.
  model, variables = classification.restore_classifier(record['model'])
  data = data_lib.open_task_data(config.data_dir, 'nih')
  images, test_labels = split_images(config, data, 'test')
  np.testing.assert_array_equal(test_labels, labels)
  probs = jax.nn.sigmoid(model.apply(variables, jnp.asarray(images), train=False))
  np.testing.assert_allclose(scores, probs, rtol=1e-4, atol=1e-6)

  # Frozen: the classifier's trunk is the checkpoint's, context blocks included, bit for bit.
  assert_trees_bitwise_equal(sub_tree(variables, 'backbone'), checkpoint_trunk(nih[0]))

  # A second invocation finds the record and does not train again ...
  trained = []  # the runs trained from here on, by their record's stem
  train_one = harness.run_one
  monkeypatch.setattr(harness, 'run_one', lambda *a: trained.append(a[-1]) or train_one(*a))
  again = evaluate.run(config, workdir)
  assert again[0]['test']['mean_auc'] == record['test']['mean_auc']
  assert again[0]['wall_time_s'] == record['wall_time_s'] and not trained
  # ... but a damaged record, or one whose classifier no longer restores, is redone.
  json_path = os.path.join(workdir, stem + '.json')
  with open(json_path, 'w') as f:
    f.write('{"task": "nih", "protoc')
  redone = evaluate.run(config, workdir)[0]
  assert trained == [stem]
  assert [f for f in os.listdir(workdir) if f.startswith(stem + '.json.corrupt-')]
  for root, _, files in os.walk(redone['model']):
    for name in files:
      if name != '_CHECKPOINT_METADATA' and os.path.getsize(os.path.join(root, name)) > 200:
        with open(os.path.join(root, name), 'r+b') as f:
          f.truncate(50)
  third = evaluate.run(config, workdir)[0]
  assert trained == [stem, stem]
  classification.restore_classifier(third['model'])  # whole again
  # ... unless that record is of another checkpoint.
  config.checkpoint = 'random'
  with pytest.raises(ValueError, match=r'seed0.json holds a run of checkpoint .*pretrained'):
    evaluate.run(config, workdir)


def test_early_stopping_tests_the_best_epoch_and_frozen_trunk_is_bitwise_unchanged(
    nih, monkeypatch):
  # Scripted validation scores: best at epoch 1, then two epochs without
  # improvement end the run (patience 2) after epoch 3.
  script = [0.2, 0.8, 0.5, 0.7, 0.99, 0.99]
  seen = []

  def scripted(task, labels, scores):
    del task, labels
    seen.append(np.array(scores))
    return script[len(seen) - 1]

  monkeypatch.setattr(classification, 'selection_score', scripted)
  workdir = str(nih[2] / 'early')
  # No feature cache: the trunk runs (inference-mode BN) in every step.
  config = nih_config(nih, protocol='frozen', frozen_feature_cache=False, num_epochs=6,
                      patience=2, label_fractions=(0.5,), seeds=(1,))
  config.optim.lr_frozen = 0.05  # big steps, so every epoch's head differs
  record = evaluate.run(config, workdir)[0]
  assert (record['best_epoch'], record['stop_epoch']) == (1, 3)
  assert len(seen) == 4 and not np.allclose(seen[1], seen[3])

  model, variables = classification.restore_classifier(record['model'])
  data = data_lib.open_task_data(config.data_dir, 'nih')
  predict = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, train=False)))
  val_images, _ = split_images(config, data, 'validation')
  np.testing.assert_allclose(predict(variables, val_images), seen[1], rtol=1e-5, atol=1e-6)
  pred = np.load(os.path.join(workdir, record['predictions']))
  test_images, _ = split_images(config, data, 'test')
  np.testing.assert_allclose(pred['scores'], predict(variables, test_images), rtol=1e-5,
                             atol=1e-6)
  assert record['num_examples']['train'] == record['label_subset']['size'] >= round(
      0.5 * data.sizes['train'])
  assert_trees_bitwise_equal(sub_tree(variables, 'backbone'), checkpoint_trunk(nih[0]))


def test_finetune_trains_the_trunk(nih):
  workdir = str(nih[2] / 'finetune')
  config = nih_config(nih, protocol='finetune', num_epochs=1, save_predictions=False)
  record = evaluate.run(config, workdir)[0]
  assert record['best_epoch'] == 0 and record['predictions'] is None
  _, variables = classification.restore_classifier(record['model'])
  trunk, reference = sub_tree(variables, 'backbone'), checkpoint_trunk(nih[0])
  for collection in ('params', 'batch_stats'):
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trunk[collection]),
                                                        jax.tree.leaves(reference[collection]))]
    assert all(changed), collection


# --- bad input -----------------------------------------------------------------------------


@pytest.fixture
def no_training(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('training started despite bad input')
  monkeypatch.setattr(harness, 'run_one', fail)


def test_missing_checkpoint_directory_is_named(tmp_path, no_training):
  config = eval_config('vinbig', checkpoint=str(tmp_path / 'no_such_run'), data_dir=str(tmp_path))
  with pytest.raises(checkpoint.CheckpointError, match='no_such_run.*does not exist'):
    evaluate.run(config, str(tmp_path / 'out'))


def test_checkpoint_of_another_architecture_is_named(tmp_path, no_training):
  wider = models.model_config('tiny')
  wider.width = 32  # the meta says width 32; the tensors are width 16
  ckpt = save_tiny_checkpoint(str(tmp_path / 'other'), model_config=wider)
  config = eval_config('nih', checkpoint=ckpt, data_dir=str(tmp_path))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'other: .*has shape \(16,\), the model expects \(32,\)'):
    evaluate.run(config, str(tmp_path / 'out'))


def test_saved_classifier_is_not_a_pretrained_checkpoint(tmp_path, no_training):
  cfg = models.model_config('tiny')
  model = models.Classifier(models.build_backbone(cfg), 14)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                                             train=False))
  path = harness.save_variables(str(tmp_path / 'clf'), numpy_variables(shapes, 0), {
      'kind': classification.MODEL_KIND, 'class_names': ['x'] * 14, 'context_blocks': 'keep',
      'model_config': checkpoint.config_to_json(cfg)})
  config = eval_config('nih', checkpoint=path, data_dir=str(tmp_path))
  with pytest.raises(checkpoint.CheckpointError, match='clf.*missing'):
    evaluate.run(config, str(tmp_path / 'out'))


def test_unprepared_task_names_directory_and_prepare_command(tmp_path, no_training):
  config = eval_config('rsna', checkpoint=save_tiny_checkpoint(str(tmp_path / 'pre')),
                       data_dir=str(tmp_path / 'tfds'))
  expected = os.path.join(str(tmp_path / 'tfds'), 'rsna')
  with pytest.raises(FileNotFoundError) as error:
    evaluate.run(config, str(tmp_path / 'out'))
  assert expected in str(error.value)
  assert 'python -m mlvicx_jax.data.prepare --dataset=rsna' in str(error.value)


@pytest.mark.parametrize('field, value, message', [
    ('protocol', 'linear', "config.protocol must be one of \\('frozen', 'finetune'\\)"),
    ('label_fractions', (0.0,), 'config.label_fractions'),
    ('checkpoint', '', 'config.checkpoint is empty'),
    ('label_subset', 'random', "config.label_subset must be one of \\('fixed', 'per_seed'\\)"),
    ('encoder.context_blocks', 'none', 'config.encoder.context_blocks must be one of'),
])
def test_bad_config_fields_are_named(field, value, message, no_training, tmp_path):
  config = eval_config('nih', data_dir=str(tmp_path))
  if '.' in field:
    group, name = field.split('.')
    config[group][name] = value
  else:
    config[field] = value
  with pytest.raises(ValueError, match=message):
    evaluate.run(config, str(tmp_path / 'out'))


def test_eval_configs_hold_plain_values():
  for task in ('nih', 'vinbig', 'rsna', 'siim'):
    config = eval_config(task, '')
    assert config.encoder.context_blocks == 'keep' and config.label_subset == 'fixed'
    assert config.optim.lr_finetune > 0 and config.optim.lr_frozen > 0
  assert eval_config('nih', 'paper').optim.lr_finetune == 1e-5
  with open(os.path.join(REPO, 'configs', 'eval', 'common.py')) as f:
    imports = [line for line in f if line.startswith(('import ', 'from '))]
  assert imports == ['import ml_collections\n']


def test_command_line_reports_a_missing_checkpoint_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'mlvicx_jax.evaluate', '--config=configs/eval/nih.py:smoke',
       f'--config.checkpoint={tmp_path}/missing', f'--config.data_dir={tmp_path}',
       f'--workdir={tmp_path}/out'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert f'{tmp_path}/missing does not exist' in result.stderr
  assert 'Traceback' not in result.stderr
  assert records.RECORD_PREFIX not in result.stdout
