"""The SIIM U-Net task: model, loss, the three Dice and their floors, the program.

References: numpy transcriptions of the loss and of each Dice definition,
computed from masks and the saved U-Net's own predictions.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from helpers import assert_trees_bitwise_equal
from helpers import checkpoint_trunk
from helpers import eval_config
from helpers import save_tiny_checkpoint
from helpers import split_images
from helpers import sub_tree
from mlvicx_jax import checkpoint
from mlvicx_jax import evaluate
from mlvicx_jax import models
from mlvicx_jax.evaluate import data as data_lib
from mlvicx_jax.evaluate import dice
from mlvicx_jax.evaluate import encoder as encoder_lib
from mlvicx_jax.evaluate import harness
from mlvicx_jax.evaluate import segmentation
from mlvicx_jax.models import unet

WIDTHS = (32, 16, 16, 8, 8)
SIZE = 96


def numpy_dice(pred: np.ndarray, true: np.ndarray) -> dict:
  """The three documented Dice, written out per image with numpy."""
  per_image, positive = [], []
  inter_sum = total_sum = 0.0
  for p, t in zip(pred.reshape(len(pred), -1) > 0.5, true.reshape(len(true), -1) > 0.5):
    inter, total = np.sum(p & t), p.sum() + t.sum()
    inter_sum, total_sum = inter_sum + inter, total_sum + total
    d = 2 * inter / total if total else 1.0
    per_image.append(d)
    if t.any():
      positive.append(d)
  return {'dice': 2 * inter_sum / total_sum, 'dice_positive': np.mean(positive),
          'dice_per_image': np.mean(per_image)}


@pytest.fixture(scope='module')
def siim(pretrained_dir, siim_data_dir, tmp_path_factory):
  config = eval_config('siim', checkpoint=pretrained_dir, data_dir=siim_data_dir, n_boot=20,
                       image_size=SIZE)
  encoder = encoder_lib.load_encoder(pretrained_dir)
  data = data_lib.open_task_data(siim_data_dir, 'siim')
  return config, encoder, data, tmp_path_factory.mktemp('siim')


@pytest.mark.parametrize('height, width', [(64, 64), (72, 40)])
def test_unet_predicts_one_logit_per_input_pixel(siim, height, width):
  model = unet.UNet(siim[1].module, WIDTHS)
  x = jnp.zeros((2, height, width, 3))
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x, train=False))[0]
  assert out.shape == (2, height, width, 1)


def test_unet_encoder_is_the_pretrained_trunk(siim, pretrained_dir):
  config, encoder, data, _ = siim
  programs = segmentation.build_programs(config, encoder, data)
  variables = programs.init(jax.random.PRNGKey(0))
  assert set(variables['params']) == {'encoder', 'decoder'}
  assert_trees_bitwise_equal(sub_tree(variables, 'encoder'), checkpoint_trunk(pretrained_dir))
  # One decoder level per skip (layer3, layer2, layer1, stem), one at full size.
  assert sorted(variables['params']['decoder']) == ['logits', 'up0', 'up1', 'up2', 'up3', 'up4']
  assert variables['params']['decoder']['up4']['conv2']['kernel'].shape == (3, 3, 8, 8)


def test_segmentation_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((3, 4, 5, 1)).astype(np.float32)
  targets = (rng.random((3, 4, 5, 1)) < 0.3).astype(np.float32)
  targets[1] = 0  # an image without pneumothorax
  mask = np.array([True, True, False])
  loss, parts = segmentation.segmentation_loss(logits, targets, mask, smooth=1.0)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(axis=(1, 2, 3))
  soft = (2 * (p * targets).sum(axis=(1, 2, 3)) + 1) / (p.sum(axis=(1, 2, 3)) +
                                                        targets.sum(axis=(1, 2, 3)) + 1)
  np.testing.assert_allclose(loss, np.mean((bce + 1 - soft)[:2]), rtol=1e-5)
  np.testing.assert_allclose(parts['soft_dice'], soft[:2].mean(), rtol=1e-5)


def test_frozen_unet_trains_the_decoder_only(siim, pretrained_dir):
  config, encoder, data, _ = siim
  config = config.copy_and_resolve_references()
  config.protocol = 'frozen'
  programs = segmentation.build_programs(config, encoder, data)
  variables = programs.init(jax.random.PRNGKey(0))
  trainable, fixed = harness.split_trainable(variables, 'frozen', 'decoder')
  opt_state = harness.set_learning_rate(programs.tx.init(trainable), 3e-3)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((4, 64, 64, 3)).astype(np.float32)
  targets = np.zeros((4, 64, 64, 1), np.float32)
  targets[:, 8:40, 16:48] = 1.0
  batch = {'image': images, 'mask_target': targets, 'mask': np.ones(4, bool)}
  losses = []
  for _ in range(8):
    trainable, fixed, opt_state, loss = programs.train_step(trainable, fixed, opt_state, batch)
    losses.append(float(loss))
  assert losses[-1] < losses[0] - 0.05, losses
  after = harness.merge_trainable(trainable, fixed)
  assert_trees_bitwise_equal(sub_tree(after, 'encoder'), checkpoint_trunk(pretrained_dir))
  before = variables['batch_stats']['decoder']['up0']['bn1']['mean']
  assert not np.array_equal(after['batch_stats']['decoder']['up0']['bn1']['mean'], before)


def test_an_empty_prediction_scores_each_documented_floor(siim):
  """A U-Net that predicts nothing: global 0, positive images 0, per image = share of empty truths."""
  config, encoder, data, _ = siim
  programs = segmentation.build_programs(config, encoder, data)
  variables = programs.init(jax.random.PRNGKey(0))
  variables['params']['decoder']['logits']['bias'] = jnp.full((1,), -1e4)
  counts, _ = segmentation.split_counts(config, programs, data, variables, 'validation')
  _, masks = split_images(config, data, 'validation', 'mask_target', segmentation=True)
  empty_share = np.mean([not m.any() for m in masks > 0.5])
  assert 0.2 < empty_share < 0.8  # the balanced split: the per-image floor is far from 0
  scored = dice.dice_summary(counts)
  assert scored == pytest.approx({'dice': 0.0, 'dice_positive': 0.0,
                                  'dice_per_image': empty_share})
  assert dice.empty_prediction_floors(counts) == pytest.approx(scored)
  assert numpy_dice(np.zeros_like(masks), masks) == pytest.approx(scored)


def test_dice_summary_hand_computed():
  pred = np.array([[[0.9, 0.2], [0.6, 0.1]],   # 2 predicted, 1 right
                   [[0.0, 0.0], [0.0, 0.0]],   # empty on empty
                   [[0.0, 0.0], [0.0, 0.0]],   # empty on one true pixel
                   [[0.7, 0.0], [0.0, 0.0]],   # one predicted on empty truth
                   [[0.8, 0.8], [0.8, 0.3]]])  # 3 predicted, 2 true inside
  true = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 1]], [[0, 0], [0, 0]],
                   [[1, 0], [1, 0]]], np.uint8)
  counts = dice.dice_counts(pred, 255 * true)  # 0/255 masks count as 0/1
  assert dice.dice_summary(counts) == pytest.approx(
      {'dice': 2 * 3 / (4 + 0 + 1 + 1 + 5), 'dice_positive': (0.5 + 0.0 + 0.8) / 3,
       'dice_per_image': (0.5 + 1.0 + 0.0 + 0.0 + 0.8) / 5})
  assert dice.empty_prediction_floors(counts) == pytest.approx(
      {'dice': 0.0, 'dice_positive': 0.0, 'dice_per_image': 2 / 5})
  assert numpy_dice(pred, true) == pytest.approx(dice.dice_summary(counts))
  with pytest.raises(ValueError, match='one shape'):
    dice.dice_counts(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


def test_siim_program_records_three_dice_with_floors(siim):
  config, _, data, root = siim
  config = config.copy_and_resolve_references()
  config.update(protocol='frozen', num_epochs=2, label_fractions=(0.3,), save_model=True)
  workdir = str(root / 'out')
  record = evaluate.run(config, workdir)[0]
  assert (record['task'], record['metric_name'], record['selection_metric']) == (
      'siim', 'dice', 'dice')
  assert os.path.isfile(os.path.join(workdir, 'run_record_siim_frozen_f0.3_seed0.csv'))
  assert record['num_examples']['train'] >= round(0.3 * data.sizes['train'])
  # Every Dice against numpy on the saved U-Net's predictions of the test split.
  variables, meta, _ = checkpoint.restore_model(record['model'])
  assert meta['kind'] == 'unet' and meta['context_blocks'] == 'keep'
  model = unet.UNet(models.build_backbone(checkpoint.model_config_from_json(meta['model_config'])),
                    tuple(meta['decoder_widths']))
  images, masks = split_images(config, data, 'test', 'mask_target', segmentation=True)
  probs = np.asarray(jax.nn.sigmoid(model.apply(variables, jnp.asarray(images), train=False)))
  assert record['test'] == pytest.approx(numpy_dice(probs, masks), abs=1e-9)
  assert record['floors'] == pytest.approx(numpy_dice(np.zeros_like(masks), masks))
  assert set(record['val_floors']) == {'dice', 'dice_positive', 'dice_per_image'}
  assert record['synthetic_data'] is True  # the fixture's SIIM films come from mlvicx_jax.synthetic


def test_segment_rejects_a_checkpoint_of_another_architecture(tmp_path, monkeypatch):
  monkeypatch.setattr(harness, 'run_one', lambda *a, **k: pytest.fail('trained'))
  deeper = models.model_config('tiny')
  deeper.stage_sizes = (1, 1, 2, 1)
  config = eval_config('siim', checkpoint=save_tiny_checkpoint(str(tmp_path / 'deeper'),
                                                               model_config=deeper),
                       data_dir=str(tmp_path))
  with pytest.raises(checkpoint.CheckpointError, match=r'deeper: missing .*layer3_1'):
    evaluate.run(config, str(tmp_path / 'out'))
  config.checkpoint = 'random'
  with pytest.raises(FileNotFoundError, match='siim has not been prepared.*--dataset=siim'):
    evaluate.run(config, str(tmp_path / 'out'))


def test_segment_command_is_an_alias_of_evaluate(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'mlvicx_jax.segment', '--config=configs/eval/siim.py:smoke',
       f'--config.checkpoint={tmp_path}/missing', f'--config.data_dir={tmp_path}',
       f'--workdir={tmp_path}/out'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert f'{tmp_path}/missing does not exist' in result.stderr
  assert 'Traceback' not in result.stderr
