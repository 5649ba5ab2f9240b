"""Grad-CAM against closed forms, on hand-built and real classifiers, and the CLI."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from conftest import REPO
from mlvicx_jax import checkpoint
from mlvicx_jax import gradcam
from mlvicx_jax import models
from helpers import numpy_variables
from helpers import save_tiny_checkpoint
from mlvicx_jax.evaluate import classification
from mlvicx_jax.evaluate import gradcam as cam_lib
from mlvicx_jax.evaluate import harness


def _gap_linear_apply(feature_map, kernel):
  """A classifier on a fixed map: logits = mean_hw(A) @ W (a GAP + linear head)."""
  def apply_fn(variables, images, map_delta):
    del variables, images
    fmap = jnp.asarray(feature_map) + map_delta
    return fmap.mean(axis=(1, 2)) @ jnp.asarray(kernel), fmap
  return apply_fn


def test_gap_linear_classifier_gives_cam_closed_form():
  # For GAP + linear, dy_k/dA = W[:, k] / (h w) everywhere, so
  # Grad-CAM = ReLU(A @ W[:, k]) / (h w) (Zhou et al.'s CAM).
  rng = np.random.default_rng(0)
  fmap = rng.standard_normal((3, 5, 7, 4)).astype(np.float32)
  kernel = rng.standard_normal((4, 6)).astype(np.float32)
  classes = np.array([0, 3, 5])
  cams, scores = cam_lib.gradcam(_gap_linear_apply(fmap, kernel), None,
                                 np.zeros((3, 5, 7, 1)), classes)
  expected = np.maximum(np.einsum('nhwc,nc->nhw', fmap, kernel[:, classes].T), 0) / 35
  np.testing.assert_allclose(np.asarray(cams), expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(scores), fmap.mean(axis=(1, 2)) @ kernel, rtol=1e-5)


def test_quadrant_logit_highlights_that_quadrant():
  # Channel 0 lights up the top-left quadrant, channel 1 the bottom-right.
  # The logit is the sum over the top-left quadrant of the map: its gradient
  # is 1 there and 0 elsewhere, so each channel weight is 1/4 (the quadrant's
  # share of the map) and the map is ReLU(sum_c A_c) / 4.
  h = w = 8
  fmap = np.zeros((1, h, w, 2), np.float32)
  fmap[0, :4, :4, 0] = 2.0
  fmap[0, 4:, 4:, 1] = -3.0  # negative evidence elsewhere is cut by the ReLU

  def apply_fn(variables, images, map_delta):
    del variables, images
    a = jnp.asarray(fmap) + map_delta
    return a[:, :4, :4, :].sum(axis=(1, 2, 3))[:, None], a

  cam, _ = cam_lib.gradcam(apply_fn, None, np.zeros((1, 32, 32, 3)), 0)
  cam_native, _ = cam_lib.gradcam(apply_fn, None, np.zeros((1, 32, 32, 3)), 0,
                                   output_size=(h, w))
  expected = np.maximum(fmap[0].sum(-1), 0) / 4
  np.testing.assert_allclose(np.asarray(cam_native[0]), expected, atol=1e-6)
  cam = np.asarray(cam[0])
  assert cam.shape == (32, 32)
  # Upsampled: positive inside the top-left quadrant, zero away from it.
  assert cam[:14, :14].min() > 0.4
  assert np.all(cam[18:, :] == 0) and np.all(cam[:, 18:] == 0)


@pytest.fixture(scope='module')
def tiny_classifier():
  cfg = models.model_config('tiny')
  model = models.Classifier(models.build_backbone(cfg, False), 3)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                                             train=False))
  # A non-trivial head (random kernel), so the classes explain different channels.
  return cfg, model, numpy_variables(shapes, 1)


def test_real_classifier_matches_cam_from_its_layer4_map(tiny_classifier):
  _, model, variables = tiny_classifier
  images = jax.random.normal(jax.random.PRNGKey(3), (2, 64, 64, 3))
  cams, scores = jax.jit(lambda v, x: cam_lib.gradcam(
      cam_lib.classifier_apply_fn(model), v, x, jnp.array([2, 1]),
      output_size=(2, 2)))(variables, images)
  # Reference: the backbone's layer4 map and the head kernel, in numpy.
  bvars = {'params': variables['params']['backbone'],
           'batch_stats': variables['batch_stats']['backbone']}
  fmap = np.asarray(model.backbone.apply(bvars, images, train=False)['maps'][-1], np.float64)
  kernel = np.asarray(variables['params']['head']['kernel'], np.float64)
  assert fmap.shape[1:3] == (2, 2)  # 64 px / 32
  expected = np.maximum(np.einsum('nhwc,nc->nhw', fmap, kernel[:, [2, 1]].T), 0) / 4
  np.testing.assert_allclose(np.asarray(cams), expected, rtol=1e-4, atol=1e-6)
  logits = fmap.mean(axis=(1, 2)) @ kernel + np.asarray(variables['params']['head']['bias'])
  np.testing.assert_allclose(np.asarray(scores), logits, rtol=1e-4, atol=1e-5)


def test_normalize_maps_scales_each_map_to_unit_peak():
  maps = np.stack([np.full((2, 2), 4.0), np.zeros((2, 2))])
  maps[0, 0, 0] = 8.0
  out = cam_lib.normalize_maps(maps)
  np.testing.assert_allclose(out[0], [[1.0, 0.5], [0.5, 0.5]])
  np.testing.assert_array_equal(out[1], 0)


def _write_pngs(directory, count=2, size=48):
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  for i in range(count):
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(
        os.path.join(directory, f'xray{i}.png'))
  return directory


def test_cli_writes_overlays_for_a_saved_classifier(tiny_classifier, tmp_path):
  cfg, model, variables = tiny_classifier
  directory = harness.save_variables(
      str(tmp_path / 'clf'), variables,
      dict(kind=classification.MODEL_KIND, model_config=checkpoint.config_to_json(cfg),
           task='nih', class_names=['A', 'B', 'C'], protocol='finetune', label_fraction=1.0,
           seed=0, image_size=64, context_blocks='drop', source='random'))
  images = _write_pngs(str(tmp_path / 'imgs'))
  paths = gradcam.explain_files(directory, gradcam.find_images(images), str(tmp_path / 'out'),
                                class_name='B')
  assert [os.path.basename(p) for p in paths] == ['xray0_gradcam_B.png', 'xray1_gradcam_B.png']
  for p in paths:
    with Image.open(p) as img:
      assert img.size[0] > 100
  with pytest.raises(ValueError, match=r"'Z' is not a class .*\['A', 'B', 'C'\]"):
    gradcam.explain_files(directory, gradcam.find_images(images), str(tmp_path / 'o2'),
                          class_name='Z')
  with pytest.raises(ValueError, match='--class_index 3 is out of range'):
    gradcam.explain_files(directory, gradcam.find_images(images), str(tmp_path / 'o2'),
                          class_index=3)


def test_pretrained_encoder_and_bad_paths(tmp_path):
  ckpt = save_tiny_checkpoint(str(tmp_path / 'pre'))
  images = _write_pngs(str(tmp_path / 'imgs'), count=1)
  paths = gradcam.explain_files(ckpt, gradcam.find_images(images), str(tmp_path / 'out'),
                                image_size=64)
  assert [os.path.basename(p) for p in paths] == ['xray0_gradcam_feature_norm.png']
  # The encoder is explained as it was pretrained: context blocks and their weights kept.
  _, variables, _, _ = gradcam.load_explainer(ckpt)
  assert {'cbt1', 'cbt5'} <= set(variables['params'])
  with pytest.raises(checkpoint.CheckpointError, match='nowhere'):
    gradcam.explain_files(str(tmp_path / 'nowhere'), gradcam.find_images(images),
                          str(tmp_path / 'o'))
  with pytest.raises(FileNotFoundError, match='nothing.*matches no'):
    gradcam.find_images(str(tmp_path / 'nothing*.png'))


def test_layer3_cam_weights_equal_finite_differences(tiny_classifier):
  """cam_layer='layer3': the channel weights are mean_hw dy/dA3; a central difference of the
  logit along a uniform push of one channel of the layer3 map gives h w times that."""
  _, model, variables = tiny_classifier
  images = jax.random.normal(jax.random.PRNGKey(4), (1, 64, 64, 3))
  cams, _ = cam_lib.gradcam(cam_lib.classifier_apply_fn(model, 'layer3'), variables, images, 1,
                        output_size=(4, 4))
  bvars = {'params': variables['params']['backbone'],
           'batch_stats': variables['batch_stats']['backbone']}
  fmap = np.asarray(model.backbone.apply(bvars, images, train=False)['maps'][3], np.float64)
  assert fmap.shape[1:3] == (4, 4)  # layer3 of 64 px: twice layer4's 2 x 2
  eps, channels = 1e-2, fmap.shape[-1]
  weights = np.zeros(channels)
  for c in range(channels):  # uniform push of channel c: d y / d eps = sum_hw dy/dA_c
    push = np.zeros((1, 4, 4, channels), np.float32)
    push[..., c] = eps
    up, down = (np.asarray(model.apply(variables, images, train=False, map_delta=s * push,
                                       map_level=3))[0, 1] for s in (1, -1))
    weights[c] = (up - down) / (2 * eps) / 16  # mean over the 4 x 4 map
  expected = np.maximum(np.einsum('hwc,c->hw', fmap[0], weights), 0)
  np.testing.assert_allclose(np.asarray(cams[0]), expected, rtol=2e-2,
                             atol=2e-2 * expected.max())
  assert expected.max() > 0


def test_a_score_that_falls_everywhere_is_no_positive_evidence(tiny_classifier, tmp_path, caplog):
  """A head whose logit ignores the map: Grad-CAM's ReLU leaves zeros, and the program says
  so instead of drawing a blank heatmap."""
  cfg, model, variables = tiny_classifier
  flat = jax.tree.map(np.array, variables)
  flat['params']['head']['kernel'][:] = 0.0
  flat['params']['head']['bias'][:] = -3.0
  images = jax.random.normal(jax.random.PRNGKey(5), (2, 64, 64, 3))
  maps, _ = cam_lib.gradcam(cam_lib.classifier_apply_fn(model), flat, images, 0)
  assert not cam_lib.has_positive_evidence(maps).any()
  assert cam_lib.has_positive_evidence(np.stack([np.zeros((3, 3)), np.eye(3)])).tolist() == [
      False, True]
  directory = harness.save_variables(
      str(tmp_path / 'clf'), flat,
      dict(kind=classification.MODEL_KIND, model_config=checkpoint.config_to_json(cfg),
           task='nih', class_names=['A', 'B', 'C'], protocol='finetune', label_fraction=1.0,
           seed=0, image_size=64, context_blocks='drop', source='random'))
  with caplog.at_level('WARNING'):
    paths = gradcam.explain_files(directory, gradcam.find_images(
        _write_pngs(str(tmp_path / 'imgs'), count=1)), str(tmp_path / 'out'), class_name='A')
  assert len(paths) == 1 and 'no positive evidence for A' in caplog.text


def test_cli_answers_bad_input_in_one_line(tmp_path):
  images = _write_pngs(str(tmp_path / 'imgs'), count=1)
  for args, expected in (
      ([f'--checkpoint={tmp_path / "nowhere"}', f'--images={images}'], 'nowhere does not exist'),
      ([f'--checkpoint={tmp_path}', f'--images={tmp_path / "none*.png"}'], 'matches no PNG')):
    run = subprocess.run([sys.executable, '-m', 'mlvicx_jax.gradcam', *args,
                          f'--out={tmp_path / "out"}'], cwd=REPO, capture_output=True, text=True,
                         check=False, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    errors = [line for line in run.stderr.splitlines() if line.startswith('error:')]
    assert run.returncode == 1 and len(errors) == 1 and expected in errors[0], run.stderr[-2000:]
    assert 'Traceback' not in run.stderr
