"""Loading a pretrained encoder for inference and downstream use.

`load(DIR)` accepts a pretraining workdir (latest checkpoint) or an
`import_torch` output; both share the layout of `mlvicx_jax.checkpoint`.
"""
import dataclasses
import functools
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections

from mlvicx_jax import checkpoint
from mlvicx_jax import models


@dataclasses.dataclass
class Pretrained:
  """A restored encoder: its config, variables and a jitted inference function."""
  model_config: ml_collections.ConfigDict
  variables: dict
  meta: dict
  step: int

  def __post_init__(self):
    self.model = models.build_model(self.model_config)
    self._embed = jax.jit(functools.partial(self.model.apply, train=False))

  def embed(self, images) -> dict:
    """float32 NHWC images, already normalised -> {'features', and 'z'/'m' if present}."""
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'embed expects NHWC images with 3 channels, got shape {images.shape}')
    return self._embed(self.variables, images)

  def backbone_variables(self, keep_context_blocks: bool = True) -> dict:
    """The trunk's params/batch_stats, for `models.build_backbone(cfg, keep_context_blocks)`."""
    def trunk(collection):
      tree = dict(collection['backbone'])
      if not keep_context_blocks:
        tree = {k: v for k, v in tree.items() if not k.startswith('cbt')}
      return tree
    return {name: trunk(col) for name, col in self.variables.items()}


def load(path: str, step: Optional[int] = None) -> Pretrained:
  """Restores the model at `path`, checked against the architecture in its meta."""
  variables, meta, step = checkpoint.restore_model(path, step)
  if 'model_config' not in meta:
    raise checkpoint.CheckpointError(f'{path}: checkpoint meta has no model_config')
  cfg = checkpoint.model_config_from_json(meta['model_config'])
  model = models.build_model(cfg)
  expected = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))
  checkpoint.check_tree(expected, variables, f'checkpoint {path}')
  variables = jax.tree.map(jnp.asarray, variables)
  return Pretrained(cfg, variables, meta, step)


def save_random_init(config, path: str) -> str:
  """The untrained network of a pretraining config (its seed) as a checkpoint.

  A random-init baseline with the pretrained layout: its meta says `random_init`,
  so evaluation re-estimates its BatchNorm statistics. Kept if `path` exists.
  """
  if os.path.isdir(path):
    return path
  model = models.build_model(config.model)
  variables = jax.jit(lambda rng: model.init(
      rng, jnp.zeros((2, config.image_size, config.image_size, 3)), train=False))(
          jax.random.PRNGKey(config.seed))
  meta = {'model_config': checkpoint.config_to_json(config.model), 'source': 'random init',
          'random_init': True}
  return checkpoint.save_model(path, jax.device_get(variables), meta)
