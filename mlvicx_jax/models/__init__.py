"""Model definitions and the one place that turns a model config into modules."""
import functools

import jax.numpy as jnp
import ml_collections

from mlvicx_jax import config_files
from mlvicx_jax.models.attention import ContextBottleneck
from mlvicx_jax.models.classifier import Classifier
from mlvicx_jax.models.heads import MultiLevelBranch, ProjectionHead
from mlvicx_jax.models.mlvicx import MLVICX
from mlvicx_jax.models.resnet import ResNet, ResNet18

__all__ = ['Classifier', 'ContextBottleneck', 'MLVICX', 'MultiLevelBranch', 'ProjectionHead',
           'ResNet', 'ResNet18', 'build_backbone', 'build_model', 'model_config']

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def model_config(variant: str = 'official') -> ml_collections.ConfigDict:
  """Architecture knobs: 'official' = the official code, 'paper' = the paper text,
  'tiny' = a narrow, shallow network for tests and smoke runs.

  The values are written once, as `model` of configs/nih.py ('', ':paper',
  ':smoke'); this reads them from there.
  """
  if variant not in config_files.MODEL_VARIANTS:
    raise ValueError(f"unknown model variant {variant!r}: use 'official', 'paper' or 'tiny'")
  return config_files.load(config_files.PRETRAINING, config_files.MODEL_VARIANTS[variant]).model


def _dtype(cfg):
  if cfg.dtype not in DTYPES:
    raise ValueError(f'model.dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}')
  return DTYPES[cfg.dtype]


REMAT = ('none', 'blocks')


def _remat(cfg) -> bool:
  """model.remat: 'none', or 'blocks' (recompute each trunk block in the backward pass).

  Absent from configs that predate it, which means 'none'.
  """
  remat = cfg.get('remat', 'none')
  if remat not in REMAT:
    raise ValueError(f'model.remat must be one of {REMAT}, got {remat!r}')
  return remat == 'blocks'


def build_backbone(cfg, keep_context_blocks: bool = True) -> ResNet:
  """The ResNet trunk; without context blocks it is the plain downstream ResNet18."""
  dtype = _dtype(cfg)
  block = None
  if cfg.context_blocks and keep_context_blocks:
    block = functools.partial(ContextBottleneck, reduction=cfg.reduction,
                              kernel_size=cfg.spatial_kernel, dtype=dtype)
  return ResNet(stage_sizes=tuple(cfg.stage_sizes), num_filters=cfg.width,
                context_block=block, dtype=dtype, remat=_remat(cfg))


def build_model(cfg) -> MLVICX:
  """The pretraining network (trunk, global head, optional multi-level branch)."""
  dtype = _dtype(cfg)
  num_levels = len(cfg.stage_sizes) + 1
  for level in cfg.levels:
    if not 0 <= level < num_levels:
      raise ValueError(f'model.levels: level {level} does not exist; the trunk has '
                       f'levels 0..{num_levels - 1} (stem, then one per stage)')
  trunk = build_backbone(cfg)
  backbone = functools.partial(ResNet, stage_sizes=trunk.stage_sizes,
                               num_filters=trunk.num_filters,
                               context_block=trunk.context_block, dtype=dtype,
                               remat=trunk.remat)
  global_head = None
  if cfg.global_head:
    global_head = functools.partial(
        ProjectionHead, widths=tuple(cfg.global_head), hidden_norm=cfg.head_hidden_norm,
        output_norm=cfg.head_output_norm, output_bias=cfg.head_output_bias, dtype=dtype)
  predictor = None
  if cfg.predictor:
    if not cfg.global_head:
      raise ValueError('model.predictor needs a model.global_head to predict from')
    predictor = functools.partial(ProjectionHead, widths=tuple(cfg.predictor),
                                  output_norm=cfg.predictor_output_norm, dtype=dtype)
  multilevel = None
  if cfg.multilevel:
    multilevel = functools.partial(
        MultiLevelBranch, head_widths=tuple(cfg.multilevel_head),
        levels=tuple(cfg.levels), common_size=cfg.multilevel_size,
        channels=cfg.multilevel_channels, pool_size=cfg.multilevel_pool,
        aggregation=cfg.aggregation, implementation=cfg.multilevel_impl, dtype=dtype)
  return MLVICX(backbone=backbone, global_head=global_head, multilevel_branch=multilevel,
                predictor=predictor)
