"""U-Net shapes, loss, training behaviour and the SIIM program on synthetic data."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlvicx_jax import checkpoint
from mlvicx_jax import models
from mlvicx_jax.evaluate import classify
from mlvicx_jax.evaluate import report_lib
from mlvicx_jax.evaluate import segmentation
from mlvicx_jax.models import unet
from test_evaluate import assert_trees_bitwise_equal
from test_evaluate import load_eval_config
from test_evaluate import numpy_variables
from test_evaluate import prepared_dataset
from test_evaluate import save_tiny_pretrained

WIDTHS = (32, 16, 16, 8, 8)


@pytest.fixture(scope='module')
def tiny_backbone():
  """A tiny trunk with fixed random (numpy) variables, like a loaded checkpoint."""
  cfg = models.model_config('tiny')
  module = models.build_backbone(cfg, keep_context_blocks=False)
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                                              train=False))
  return classify.Backbone(cfg, module, numpy_variables(shapes, 3), 'test')


@pytest.mark.parametrize('height, width', [(64, 64), (72, 40)])
def test_unet_predicts_one_logit_per_input_pixel(tiny_backbone, height, width):
  model = unet.UNet(tiny_backbone.module, WIDTHS)
  x = jnp.zeros((2, height, width, 3))
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x, train=False))[0]
  assert out.shape == (2, height, width, 1)


@pytest.fixture(scope='module')
def tiny_unet(tiny_backbone):
  return segmentation.init_unet(tiny_backbone, WIDTHS, jax.random.PRNGKey(0), 64)


def test_unet_encoder_is_the_backbone_tree(tiny_backbone, tiny_unet):
  _, variables = tiny_unet
  assert set(variables['params']) == {'encoder', 'decoder'}
  assert_trees_bitwise_equal({'params': variables['params']['encoder'],
                              'batch_stats': variables['batch_stats']['encoder']},
                             tiny_backbone.variables)
  # One decoder level per skip (layer3, layer2, layer1, stem), one at full size.
  assert sorted(variables['params']['decoder']) == ['logits', 'up0', 'up1', 'up2', 'up3', 'up4']
  assert variables['params']['decoder']['up4']['conv2']['kernel'].shape == (3, 3, 8, 8)
  assert variables['params']['decoder']['logits']['kernel'].shape == (1, 1, 8, 1)


def test_segmentation_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((3, 4, 5, 1)).astype(np.float32)
  targets = (rng.random((3, 4, 5, 1)) < 0.3).astype(np.float32)
  targets[1] = 0  # an image without pneumothorax
  mask = np.array([True, True, False])
  loss, parts = segmentation.segmentation_loss(logits, targets, mask, smooth=1.0)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(axis=(1, 2, 3))
  dice = (2 * (p * targets).sum(axis=(1, 2, 3)) + 1) / (p.sum(axis=(1, 2, 3)) +
                                                        targets.sum(axis=(1, 2, 3)) + 1)
  np.testing.assert_allclose(loss, np.mean((bce + 1 - dice)[:2]), rtol=1e-5)
  np.testing.assert_allclose(parts['soft_dice'], dice[:2].mean(), rtol=1e-5)


def test_frozen_unet_trains_the_decoder_only(tiny_backbone, tiny_unet):
  model, variables = tiny_unet
  config = load_eval_config('siim')
  tx = classify.make_optimizer(config)
  step = segmentation.make_train_step(model, tx, 'frozen')
  trainable, fixed = classify.split_trainable(variables, 'frozen', head='decoder')
  opt_state = classify.set_learning_rate(tx.init(trainable), 3e-3)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((4, 64, 64, 3)).astype(np.float32)
  targets = np.zeros((4, 64, 64, 1), np.float32)
  targets[:, 8:40, 16:48] = 1.0
  batch = {'image': images, 'mask_target': targets, 'mask': np.ones(4, bool)}
  losses = []
  for _ in range(8):
    trainable, fixed, opt_state, loss = step(trainable, fixed, opt_state, batch)
    losses.append(float(loss))
  assert losses[-1] < losses[0] - 0.05, losses
  after = classify.merge_trainable(trainable, fixed)
  assert_trees_bitwise_equal({'params': after['params']['encoder'],
                              'batch_stats': after['batch_stats']['encoder']},
                             tiny_backbone.variables)
  # The decoder's BatchNorm trained (its running statistics moved).
  before = variables['batch_stats']['decoder']['up0']['bn1']['mean']
  assert not np.array_equal(after['batch_stats']['decoder']['up0']['bn1']['mean'], before)


@pytest.fixture(scope='module')
def siim(tmp_path_factory):
  root = tmp_path_factory.mktemp('siim')
  return prepared_dataset(str(root), 'siim', 40), save_tiny_pretrained(str(root / 'pre')), root


def test_siim_program_writes_dice_records(siim):
  data_dir, ckpt, root = siim
  config = load_eval_config('siim')
  config.update(checkpoint=ckpt, data_dir=data_dir, protocol='frozen', num_epochs=2,
                n_boot=20, label_fractions=(0.3,))
  workdir = str(root / 'out')
  record = segmentation.run(config, workdir)[0]
  assert (record['task'], record['metric_name'], record['label_fraction']) == ('siim', 'dice', 0.3)
  assert os.path.isfile(os.path.join(workdir, 'run_record_siim_frozen_f0.3_seed0.csv'))
  assert report_lib.load_run_records(workdir)[0]['test']['dice'] == record['test']['dice']
  data = classify.open_task_data(data_dir, 'siim')
  assert record['num_examples']['train'] == round(0.3 * data.sizes['train'])
  pred = np.load(os.path.join(workdir, record['predictions']))
  assert len(pred['per_image_dice']) == data.sizes['test'] > 0
  assert record['test']['dice'] == pytest.approx(np.mean(pred['per_image_dice']))
  assert 0.0 <= record['val']['dice'] <= 1.0 and record['best_epoch'] in (0, 1)


def test_segment_rejects_a_checkpoint_of_another_architecture(tmp_path, monkeypatch):
  monkeypatch.setattr(segmentation, 'run_one', lambda *a, **k: pytest.fail('trained'))
  wider = models.model_config('tiny')
  wider.stage_sizes = (1, 1, 2, 1)
  config = load_eval_config('siim')
  config.update(checkpoint=save_tiny_pretrained(str(tmp_path / 'deeper'), model_config=wider),
                data_dir=str(tmp_path))
  with pytest.raises(checkpoint.CheckpointError, match=r'deeper: missing .*layer3_1'):
    segmentation.run(config, str(tmp_path / 'out'))
  config.checkpoint = 'random'
  with pytest.raises(FileNotFoundError, match='siim has not been prepared.*--dataset=siim'):
    segmentation.run(config, str(tmp_path / 'out'))
