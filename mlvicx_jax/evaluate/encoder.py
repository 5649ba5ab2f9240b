"""The encoder every downstream protocol starts from (SPEC section 4).

By default it is the network as it was pretrained: the ResNet trunk with its
context-bottleneck (CBAM) blocks, their weights and the BatchNorm running
statistics gathered behind the blocks' gates. `context_blocks='drop'` gives
the official code's plain ResNet18; its statistics no longer fit the ungated
maps (layer4 activations grow by orders of magnitude), so they are then
re-estimated on downstream training images before anything is frozen.

The random-initialisation baseline gets the same treatment as a pretrained
encoder whose statistics came from data: its initial statistics (mean 0,
variance 1) describe no data, so they are always re-estimated.

Re-estimation runs the trunk in training mode (batch statistics, no
gradients) over a fixed number of batches and pools them exactly: the
running mean is the mean over all pixels of all batches, the running
variance the pooled (biased) variance, as a single batch of every image
would give.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlvicx_jax import checkpoint
from mlvicx_jax import models
from mlvicx_jax import pretrained
from mlvicx_jax import vocabulary
from mlvicx_jax.models import resnet

RANDOM_INIT = 'random'  # config.checkpoint=random: the random-init baseline
CONTEXT_BLOCKS = ('keep', 'drop')


@dataclasses.dataclass
class Encoder:
  """A trunk, its variables and what its BatchNorm statistics need."""
  model_config: ml_collections.ConfigDict
  module: nn.Module          # models.build_backbone(cfg, keep_context_blocks)
  variables: Optional[dict]  # None: initialised per seed (random-init baseline)
  source: str                # checkpoint path (absolute) or 'random'
  context_blocks: str        # 'keep' | 'drop'
  random_init: bool          # statistics are initial values, not from data
  method: Optional[str] = None  # pretraining method (config.method); 'random'; None: unknown

  @property
  def reestimate_bn(self) -> bool:
    """Whether the statistics must be gathered on downstream images first."""
    return self.random_init or (self.context_blocks == 'drop' and self.model_config.context_blocks)


def load_encoder(checkpoint_path: str, context_blocks: str = 'keep',
                 model_variant: str = 'official') -> Encoder:
  """Reads the trunk of a pretrained checkpoint, checked against its architecture.

  'random' gives an uninitialised `model_variant` trunk. A checkpoint whose
  meta says `random_init` (the demo's untrained network) is a pretrained
  encoder in layout but a random one in statistics.
  """
  if context_blocks not in CONTEXT_BLOCKS:
    raise ValueError(f'config.encoder.context_blocks must be one of {CONTEXT_BLOCKS}, '
                     f'got {context_blocks!r}')
  keep = context_blocks == 'keep'
  if checkpoint_path == RANDOM_INIT:
    cfg = models.model_config(model_variant)
    return Encoder(cfg, models.build_backbone(cfg, keep), None, RANDOM_INIT, context_blocks,
                   random_init=True, method=vocabulary.RANDOM_INIT)
  path = os.path.abspath(os.path.expanduser(checkpoint_path))
  if not os.path.isdir(path):
    raise checkpoint.CheckpointError(f'config.checkpoint: directory {path} does not exist')
  loaded = pretrained.load(path)
  cfg = loaded.model_config
  module = models.build_backbone(cfg, keep)
  variables = loaded.backbone_variables(keep)
  expected = jax.eval_shape(lambda: module.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))
  checkpoint.check_tree(expected, variables, f'backbone of checkpoint {path}')
  random_init = bool(loaded.meta.get('random_init', False))
  return Encoder(cfg, module, variables, path, context_blocks, random_init=random_init,
                 method=vocabulary.RANDOM_INIT if random_init else pretraining_method(loaded.meta))


def pretraining_method(meta: dict) -> Optional[str]:
  """config.method of the pretraining run (runs before it existed were MLVICX);
  None for checkpoints from elsewhere (import_torch)."""
  if meta.get('source') != 'pretraining':
    return None
  return (meta.get('config') or {}).get('method', 'mlvicx')


def make_bn_estimator(module: nn.Module):
  """jit(variables, images) -> this batch's statistics of every BatchNorm.

  Flax updates a running average as m * old + (1 - m) * batch; starting
  from zeros, dividing by (1 - m) leaves the batch mean and, for `var`,
  the batch's biased variance.
  """
  def batch_statistics(variables, images):
    zeros = jax.tree.map(jnp.zeros_like, variables['batch_stats'])
    _, updates = module.apply({'params': variables['params'], 'batch_stats': zeros},
                              images, train=True, mutable=['batch_stats'])
    return jax.tree.map(lambda s: s / (1 - resnet.BN_MOMENTUM), updates['batch_stats'])
  return jax.jit(batch_statistics)


def estimate_batch_stats(estimator, variables: dict, batches: Iterable) -> tuple[dict, int]:
  """Pooled BatchNorm statistics over `batches` of images: (batch_stats, images used).

  Each batch weighs by its number of images (every pixel counts once):
  mean = weighted mean of the batch means; var = weighted mean of
  (var + mean^2) - mean^2, the variance of one batch holding every image.
  """
  sums, images = None, 0
  for batch in batches:
    stats = jax.device_get(estimator(variables, jnp.asarray(batch)))
    weight = float(len(batch))
    second = _second_moments(jax.tree.map(lambda s: weight * np.asarray(s, np.float64), stats),
                             weight)
    sums = second if sums is None else jax.tree.map(np.add, sums, second)
    images += len(batch)
  if not images:
    raise ValueError('no images to estimate BatchNorm statistics on')
  return _from_second_moments(jax.tree.map(lambda s: s / images, sums)), images


def _second_moments(weighted: dict, weight: float) -> dict:
  """{'mean': w m, 'var': w v} -> {'mean': w E[x], 'var': w E[x^2]} per BatchNorm."""
  if set(weighted) == {'mean', 'var'}:
    mean = weighted['mean']
    return {'mean': mean, 'var': weighted['var'] + mean**2 / weight}
  return {k: _second_moments(v, weight) for k, v in weighted.items()}


def _from_second_moments(moments: dict) -> dict:
  if set(moments) == {'mean', 'var'}:
    mean = moments['mean']
    return {'mean': jnp.asarray(mean, jnp.float32),
            'var': jnp.asarray(np.maximum(moments['var'] - mean**2, 0.0), jnp.float32)}
  return {k: _from_second_moments(v) for k, v in moments.items()}
