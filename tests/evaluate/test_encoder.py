"""The downstream encoder is the pretrained one (SPEC section 4, issue 8).

The checkpoint comes from real pretraining steps (conftest `pretrained_dir`),
so its BatchNorm statistics were gathered behind the context blocks: the
defect these tests guard against passed every test while checkpoints had
identity statistics. References: `pretrained.load(DIR).embed`, numpy
moments of the network's own intermediate activations, and the network in
training mode (batch statistics).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import checkpoint_trunk
from helpers import eval_config
from helpers import split_images
from mlvicx_jax import pretrained
from mlvicx_jax.evaluate import classification
from mlvicx_jax.evaluate import data as data_lib
from mlvicx_jax.evaluate import encoder as encoder_lib
from mlvicx_jax.evaluate import harness


def test_checkpoint_statistics_come_from_training(pretrained_dir):
  stats = checkpoint_trunk(pretrained_dir)['batch_stats']
  means = np.concatenate([np.ravel(v) for p, v in jax.tree_util.tree_leaves_with_path(stats)
                          if p[-1].key == 'mean'])
  variances = np.concatenate([np.ravel(v) for p, v in jax.tree_util.tree_leaves_with_path(stats)
                              if p[-1].key == 'var'])
  assert np.abs(means).max() > 0.01 and np.abs(variances - 1).max() > 0.05


@pytest.fixture(scope='module')
def nih_frozen(pretrained_dir, nih_data_dir):
  config = eval_config('nih', checkpoint=pretrained_dir, data_dir=nih_data_dir,
                       protocol='frozen')
  return config, data_lib.open_task_data(nih_data_dir, 'nih')


def test_frozen_features_are_the_pretrained_encoders(nih_frozen, pretrained_dir):
  """What the probe trains on equals pretrained.load(DIR).embed(x)['features']."""
  config, data = nih_frozen
  encoder = encoder_lib.load_encoder(config.checkpoint, config.encoder.context_blocks)
  assert config.encoder.context_blocks == 'keep' and not encoder.reestimate_bn
  programs = classification.build_programs(config, encoder, data)
  variables = programs.init(jax.random.PRNGKey(0))
  features, _, _ = classification.split_features(
      config, programs, data, classification.trunk_variables(variables), 'test', flips=False)
  images, _ = split_images(config, data, 'test')
  expected = np.asarray(pretrained.load(pretrained_dir).embed(images)['features'])
  np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def _bn_outputs(module, variables, images, train):
  """Every BatchNorm's output, through flax's intermediate capture."""
  kwargs = dict(train=train, capture_intermediates=lambda mdl, _: 'bn' in (mdl.name or ''))
  if train:
    kwargs['mutable'] = ['batch_stats', 'intermediates']
  _, state = module.apply(variables, images, **kwargs)
  return jax.tree.leaves(state['intermediates'])


def test_dropped_blocks_get_statistics_of_the_downstream_images(nih_frozen):
  config, data = nih_frozen
  encoder = encoder_lib.load_encoder(config.checkpoint, 'drop')
  assert encoder.reestimate_bn and not any(k.startswith('cbt') for k in encoder.variables['params'])
  images, _ = split_images(config, data, 'train')
  images = images[:20]
  estimator = encoder_lib.make_bn_estimator(encoder.module)

  # One batch of every image: inference mode with the estimate is training mode.
  stats, used = encoder_lib.estimate_batch_stats(estimator, encoder.variables, [images])
  assert used == 20
  estimated = {'params': encoder.variables['params'], 'batch_stats': stats}
  assert len(_bn_outputs(encoder.module, estimated, images, False)) >= 10
  for got, want in zip(_bn_outputs(encoder.module, estimated, images, False),
                       _bn_outputs(encoder.module, encoder.variables, images, True)):
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4)

  # Unequal batches pool exactly: the stem BN's statistics are the numpy
  # moments of the stem convolution over all 20 images.
  stats, used = encoder_lib.estimate_batch_stats(
      estimator, encoder.variables, [images[:8], images[8:16], images[16:]])
  _, state = encoder.module.apply(encoder.variables, images, train=False,
                                  capture_intermediates=lambda mdl, _: mdl.name == 'conv1')
  conv1 = np.asarray(state['intermediates']['conv1']['__call__'][0], np.float64)
  np.testing.assert_allclose(stats['bn1']['mean'], conv1.mean(axis=(0, 1, 2)), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(stats['bn1']['var'], conv1.var(axis=(0, 1, 2)), rtol=1e-4,
                             atol=1e-6)
  # The checkpoint's statistics (gathered behind the gates) are not these.
  assert not np.allclose(stats['bn1']['var'], encoder.variables['batch_stats']['bn1']['var'],
                         rtol=0.05)


def test_harness_reestimates_once_per_trunk_and_records_it(nih_frozen):
  config, data = nih_frozen
  config = config.copy_and_resolve_references()
  config.encoder.context_blocks = 'drop'
  config.encoder.bn_batches, config.encoder.bn_batch_size = 3, 16
  encoder = encoder_lib.load_encoder(config.checkpoint, 'drop')
  programs = classification.build_programs(config, encoder, data)
  statistics = harness.TrunkStatistics(config, encoder, data, programs.trunk_name)
  variables, used = statistics.apply(programs.init(jax.random.PRNGKey(0)), seed=0)
  assert used == 48
  again, _ = statistics.apply(programs.init(jax.random.PRNGKey(1)), seed=1)
  assert again['batch_stats']['backbone'] is variables['batch_stats']['backbone']
  record = harness.encoder_record(config, encoder, used)
  assert record == {'context_blocks': 'drop', 'bn_statistics': 're-estimated', 'bn_batches': 3,
                    'bn_images': 48, 'random_init': False, 'method': 'mlvicx'}
  # Kept blocks: the checkpoint's own statistics, untouched.
  kept = encoder_lib.load_encoder(config.checkpoint, 'keep')
  assert harness.encoder_record(config, kept, None)['bn_statistics'] == 'checkpoint'


def test_random_init_statistics_are_always_reestimated(nih_frozen):
  config, data = nih_frozen
  encoder = encoder_lib.load_encoder('random', 'keep', 'tiny')
  assert encoder.random_init and encoder.reestimate_bn
  config = config.copy_and_resolve_references()
  config.encoder.bn_batches, config.encoder.bn_batch_size = 1, 32
  programs = classification.build_programs(config, encoder, data)
  statistics = harness.TrunkStatistics(config, encoder, data, programs.trunk_name)
  initial = programs.init(jax.random.PRNGKey(0))
  variables, _ = statistics.apply(initial, seed=0)
  stem = variables['batch_stats']['backbone']['bn1']
  assert not np.allclose(stem['var'], 1.0) and not np.allclose(stem['mean'], 0.0)
  # Each seed's random trunk gets its own statistics.
  other, _ = statistics.apply(programs.init(jax.random.PRNGKey(1)), seed=1)
  assert not np.allclose(other['batch_stats']['backbone']['bn1']['mean'], stem['mean'])


def test_unknown_context_blocks_value_is_named():
  with pytest.raises(ValueError, match="config.encoder.context_blocks must be one of"):
    encoder_lib.load_encoder('random', 'remove')


def test_embed_and_features_agree_on_one_image(pretrained_dir):
  """A single image gives the same features alone as inside a batch (inference BN)."""
  rng = np.random.default_rng(0)
  images = rng.standard_normal((3, 96, 96, 3)).astype(np.float32)
  enc = pretrained.load(pretrained_dir)
  batch = np.asarray(enc.embed(images)['features'])
  alone = np.asarray(enc.embed(jnp.asarray(images[1:2]))['features'])
  np.testing.assert_allclose(alone[0], batch[1], rtol=1e-5, atol=1e-6)
