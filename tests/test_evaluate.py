"""The classification program end to end on synthetic NIH, and its parts.

References are independent of the code under test: scikit-learn AUCs,
torch's CosineAnnealingWarmRestarts, forward passes of the saved classifier,
and the checkpoint the run started from.
"""
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from mlvicx_jax import checkpoint
from mlvicx_jax import models
from mlvicx_jax.evaluate import classify
from mlvicx_jax.evaluate import report_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 64


# --- helpers shared with test_segment.py ------------------------------------------------


def load_eval_config(name: str, variant: str = 'smoke'):
  """configs/eval/<name>.py:<variant>, loaded as the absl config flag would."""
  path = os.path.join(REPO, 'configs', 'eval', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'eval_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def numpy_variables(shapes, seed: int):
  """Random variables of a given structure without compiling an init.

  BatchNorm: scale 1, bias 0, running mean 0, var 1; other kernels He-normal.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], 'key', str(path[-1]))
    if name in ('scale', 'var'):
      return np.ones(leaf.shape, leaf.dtype)
    if name in ('bias', 'mean'):
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) or 1
    return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def save_tiny_pretrained(directory: str, seed: int = 0, model_config=None) -> str:
  """A pretraining-style checkpoint of a randomly initialised tiny MLVICX."""
  cfg = models.model_config('tiny')
  net = models.build_model(cfg)
  shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0),
                                           jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)),
                                           train=False))
  meta_cfg = cfg if model_config is None else model_config
  return checkpoint.save_model(directory, numpy_variables(shapes, seed),
                               {'model_config': checkpoint.config_to_json(meta_cfg),
                                'source': 'test'})


def prepared_dataset(root, dataset: str, num_images: int) -> str:
  """Synthetic `dataset` in its real layout, built by mlvicx_jax.data.prepare."""
  from mlvicx_jax.data import prepare  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  raw, data_dir = os.path.join(root, f'raw_{dataset}'), os.path.join(root, 'tfds')
  synthetic.generate(dataset, raw, num_images, seed=0, image_size=96)
  prepare.prepare(dataset, raw, data_dir, image_size=IMAGE_SIZE, num_workers=0)
  return data_dir


def trunk(variables):
  """The trunk of a saved MLVICX without context blocks, as a flat dict."""
  params = {k: v for k, v in variables['params']['backbone'].items() if not k.startswith('cbt')}
  return {'params': params, 'batch_stats': variables['batch_stats']['backbone']}


def assert_trees_bitwise_equal(a, b):
  flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(v)
                       for p, v in jax.tree_util.tree_leaves_with_path(tree)}
  flat_a, flat_b = flat(a), flat(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)


def eval_images(config, data, split):
  """Every real image and label of a split, through the evaluation loader."""
  images, labels = [], []
  for batch in classify.loader(config, data, split, train=False):
    keep = np.asarray(batch['mask'], bool)
    images.append(np.asarray(batch['image'])[keep])
    labels.append(np.asarray(batch['label'])[keep])
  return np.concatenate(images), np.concatenate(labels)


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def nih(tmp_path_factory):
  root = tmp_path_factory.mktemp('nih')
  data_dir = prepared_dataset(str(root), 'nih', 80)
  ckpt = save_tiny_pretrained(str(root / 'pretrained'))
  return data_dir, ckpt, root


def nih_config(nih_fixture, **overrides):
  data_dir, ckpt, _ = nih_fixture
  config = load_eval_config('nih')
  config.checkpoint = ckpt
  config.data_dir = data_dir
  config.n_boot = 20
  config.update(overrides)
  return config


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
  np.testing.assert_allclose(classify.cosine_warm_restarts(75, 3e-3, 1e-6, 10, 2), expected,
                             rtol=1e-9)


def test_bce_loss_ignores_padding_rows():
  logits = np.array([[2.0, -1.0], [0.5, 0.0], [9.0, 9.0]], np.float32)
  labels = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32)
  mask = np.array([True, True, False])
  p = 1 / (1 + np.exp(-logits[:2].astype(np.float64)))
  expected = -np.mean(labels[:2] * np.log(p) + (1 - labels[:2]) * np.log(1 - p))
  np.testing.assert_allclose(classify.bce_loss(logits, labels, mask), expected, rtol=1e-6)


def test_fit_keeps_state_of_best_epoch_and_stops_after_patience():
  scores = [0.3, 0.7, 0.6, 0.7, 0.65, 0.9]
  result = classify.fit(
      0, lambda state, epoch, lr: (state + 1, 0.0),
      lambda state: (scores[state - 1], f'payload {state}'), lrs=[1.0] * 6, patience=3)
  # Epoch 1 is best (0.7; the tie at epoch 3 keeps the earlier one); epochs
  # 2, 3, 4 do not improve, so training stops after epoch 4.
  assert (result.best_epoch, result.stop_epoch) == (1, 4)
  assert result.best_state == 2 and result.best_payload == 'payload 2'
  assert [h['val_score'] for h in result.history] == scores[:5]


# --- end to end -----------------------------------------------------------------------------


def test_frozen_probe_end_to_end_writes_records_that_match_its_classifier(nih):
  workdir = str(nih[2] / 'frozen')
  config = nih_config(nih, protocol='frozen', num_epochs=3)
  records = classify.run(config, workdir)
  assert len(records) == 1
  record = records[0]
  stem = 'run_record_nih_frozen_f1_seed0'
  for suffix in ('.json', '.csv', '_predictions.npz'):
    assert os.path.isfile(os.path.join(workdir, stem + suffix))
  reloaded = report_lib.load_run_records(workdir)[0]['test']
  assert reloaded['per_class_auc'] == pytest.approx(record['test']['per_class_auc'], nan_ok=True)
  assert record['checkpoint'] == nih[1] and record['feature_cache']
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
  model, variables = classify.restore_classifier(record['classifier'])
  data = classify.open_task_data(config.data_dir, 'nih')
  images, test_labels = eval_images(config, data, 'test')
  np.testing.assert_array_equal(test_labels, labels)
  probs = jax.nn.sigmoid(model.apply(variables, jnp.asarray(images), train=False))
  np.testing.assert_allclose(scores, probs, rtol=1e-4, atol=1e-6)

  # Frozen: the classifier's trunk is the checkpoint's, bit for bit.
  saved, _, _ = checkpoint.restore_model(nih[1])
  assert_trees_bitwise_equal(classify._backbone_variables(variables), trunk(saved))

  # A second invocation finds the record and does not train again.
  again = classify.run(config, workdir)
  assert again[0]['test']['mean_auc'] == record['test']['mean_auc']
  # ... unless that record is of another checkpoint.
  config.checkpoint = 'random'
  with pytest.raises(ValueError, match=r'seed0.json holds a run of checkpoint .*pretrained'):
    classify.run(config, workdir)


def test_early_stopping_tests_the_best_epoch_and_frozen_backbone_is_bitwise_unchanged(
    nih, monkeypatch):
  # Scripted validation scores: best at epoch 1, then two epochs without
  # improvement end the run (patience 2) after epoch 3.
  script = [0.2, 0.8, 0.5, 0.7, 0.99, 0.99]
  seen = []

  def scripted(labels, scores):
    seen.append(np.array(scores))
    return script[len(seen) - 1]

  monkeypatch.setattr(classify, 'validation_score', scripted)
  workdir = str(nih[2] / 'early')
  # No feature cache: the backbone runs (inference-mode BN) in every step.
  config = nih_config(nih, protocol='frozen', frozen_feature_cache=False, num_epochs=6,
                      patience=2, label_fractions=(0.5,), seeds=(1,))
  config.optim.lr_frozen = 0.05  # big steps, so every epoch's head differs
  record = classify.run(config, workdir)[0]
  assert (record['best_epoch'], record['stop_epoch']) == (1, 3)
  assert len(seen) == 4 and not np.allclose(seen[1], seen[3])

  model, variables = classify.restore_classifier(record['classifier'])
  data = classify.open_task_data(config.data_dir, 'nih')
  predict = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, train=False)))
  val_images, val_labels = eval_images(config, data, 'validation')
  np.testing.assert_allclose(predict(variables, val_images), seen[1], rtol=1e-5, atol=1e-6)
  assert record['val']['per_class_auc'] == pytest.approx(
      classify.summary(val_labels, seen[1], list(data.class_names))['per_class_auc'],
      nan_ok=True)
  pred = np.load(os.path.join(workdir, record['predictions']))
  test_images, _ = eval_images(config, data, 'test')
  np.testing.assert_allclose(pred['scores'], predict(variables, test_images), rtol=1e-5,
                             atol=1e-6)
  assert record['num_examples']['train'] == round(0.5 * data.sizes['train'])

  saved, _, _ = checkpoint.restore_model(nih[1])
  assert_trees_bitwise_equal(classify._backbone_variables(variables), trunk(saved))


def test_finetune_trains_the_backbone(nih):
  workdir = str(nih[2] / 'finetune')
  config = nih_config(nih, protocol='finetune', num_epochs=1, save_predictions=False)
  record = classify.run(config, workdir)[0]
  assert record['best_epoch'] == 0 and record['predictions'] is None
  _, variables = classify.restore_classifier(record['classifier'])
  saved, _, _ = checkpoint.restore_model(nih[1])
  backbone = classify._backbone_variables(variables)
  reference = trunk(saved)
  for collection in ('params', 'batch_stats'):
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(backbone[collection]),
                                                        jax.tree.leaves(reference[collection]))]
    assert all(changed), collection


# --- bad input ------------------------------------------------------------------------------


@pytest.fixture
def no_training(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('training started despite bad input')
  monkeypatch.setattr(classify, 'run_one', fail)


def test_missing_checkpoint_directory_is_named(tmp_path, no_training):
  config = load_eval_config('vinbig')
  config.checkpoint = str(tmp_path / 'no_such_run')
  config.data_dir = str(tmp_path)
  with pytest.raises(checkpoint.CheckpointError, match='no_such_run.*does not exist'):
    classify.run(config, str(tmp_path / 'out'))


def test_checkpoint_of_another_architecture_is_named(tmp_path, no_training):
  wider = models.model_config('tiny')
  wider.width = 32  # the meta says width 32; the tensors are width 16
  ckpt = save_tiny_pretrained(str(tmp_path / 'other'), model_config=wider)
  config = load_eval_config('nih')
  config.checkpoint = ckpt
  config.data_dir = str(tmp_path)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'other: .*has shape \(16,\), the model expects \(32,\)'):
    classify.run(config, str(tmp_path / 'out'))


def test_saved_classifier_is_not_a_pretrained_checkpoint(tmp_path, no_training):
  cfg = models.model_config('tiny')
  backbone = classify.Backbone(cfg, models.build_backbone(cfg, False), None, 'random')
  shapes = jax.eval_shape(lambda: classify.Classifier(backbone.module, 14).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))
  path = classify.save_classifier(str(tmp_path / 'clf'), numpy_variables(shapes, 0), cfg,
                                  dict(task='nih', class_names=['x'] * 14,
                                       keep_context_blocks=False))
  config = load_eval_config('nih')
  config.checkpoint = path
  config.data_dir = str(tmp_path)
  with pytest.raises(checkpoint.CheckpointError, match='clf.*missing'):
    classify.run(config, str(tmp_path / 'out'))


def test_unprepared_task_names_directory_and_prepare_command(tmp_path, no_training):
  config = load_eval_config('rsna')
  config.checkpoint = save_tiny_pretrained(str(tmp_path / 'pre'))
  config.data_dir = str(tmp_path / 'tfds')
  expected = os.path.join(str(tmp_path / 'tfds'), 'rsna')
  with pytest.raises(FileNotFoundError) as error:
    classify.run(config, str(tmp_path / 'out'))
  assert expected in str(error.value)
  assert 'python -m mlvicx_jax.data.prepare --dataset=rsna' in str(error.value)


@pytest.mark.parametrize('field, value, message', [
    ('protocol', 'linear', "config.protocol must be one of \\('frozen', 'finetune'\\)"),
    ('label_fractions', (0.0,), 'config.label_fractions'),
    ('checkpoint', '', 'config.checkpoint is empty'),
])
def test_bad_config_fields_are_named(field, value, message, no_training, tmp_path):
  config = load_eval_config('nih')
  config.data_dir = str(tmp_path)
  config[field] = value
  with pytest.raises(ValueError, match=message):
    classify.run(config, str(tmp_path / 'out'))


def test_command_line_reports_a_missing_checkpoint(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'mlvicx_jax.evaluate', '--config=configs/eval/nih.py:smoke',
       f'--config.checkpoint={tmp_path}/missing', f'--config.data_dir={tmp_path}',
       f'--workdir={tmp_path}/out'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert f'{tmp_path}/missing does not exist' in result.stderr
