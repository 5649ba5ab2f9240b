"""Validation of a pretraining config before anything is compiled.

Every message names the offending field, so a typo costs seconds, not a
queue slot on a pod.
"""
import jax

from mlvicx_jax import models
from mlvicx_jax import optim
from mlvicx_jax.data import device_augment
from mlvicx_jax.data import info as data_info


class ConfigError(ValueError):
  pass


def _require(condition: bool, field: str, message: str):
  if not condition:
    raise ConfigError(f'config.{field}: {message}')


def validate(config) -> None:
  """Raises ConfigError naming the first impossible field."""
  _require(config.dataset in data_info.DATASETS, 'dataset',
           f'unknown dataset {config.dataset!r}; expected one of {list(data_info.DATASETS)}')
  _require(config.dataset == 'nih', 'dataset', 'pretraining uses NIH ChestX-ray14 images')
  devices = jax.device_count()
  _require(config.global_batch_size > 1, 'global_batch_size', 'must be at least 2 (VICReg statistics)')
  _require(config.global_batch_size % devices == 0, 'global_batch_size',
           f'{config.global_batch_size} is not divisible by the {devices} devices')
  _require(config.global_batch_size % jax.process_count() == 0, 'global_batch_size',
           f'{config.global_batch_size} is not divisible by the {jax.process_count()} processes')
  _require(config.image_size >= 32, 'image_size', f'{config.image_size} is too small (>= 32)')
  _require(config.num_epochs > 0 or config.num_train_steps > 0, 'num_epochs',
           'set num_epochs > 0 or num_train_steps > 0')
  o = config.optim
  _require(o.optimizer in ('lars', 'adamw'), 'optim.optimizer',
           f"{o.optimizer!r} is not 'lars' or 'adamw'")
  _require(o.base_lr >= 0, 'optim.base_lr', f'must be >= 0, got {o.base_lr}')
  _require(o.weight_decay >= 0, 'optim.weight_decay', f'must be >= 0, got {o.weight_decay}')
  _require(0 <= o.momentum < 1, 'optim.momentum', f'must be in [0, 1), got {o.momentum}')
  _require(o.warmup_epochs >= 0, 'optim.warmup_epochs', f'must be >= 0, got {o.warmup_epochs}')
  _require(o.cosine_over in optim.COSINE_OVER_CHOICES, 'optim.cosine_over',
           f'{o.cosine_over!r} is not one of {optim.COSINE_OVER_CHOICES}')
  l = config.loss
  _require(l.use_global or l.use_local, 'loss.use_global', 'at least one of loss.use_global / '
           'loss.use_local must be True')
  _require(not l.use_global or bool(config.model.global_head), 'model.global_head',
           'empty, but loss.use_global is True')
  _require(not l.use_local or config.model.multilevel, 'model.multilevel',
           'False, but loss.use_local is True')
  _require(l.lam >= 0, 'loss.lam', f'must be >= 0, got {l.lam}')
  _require(config.checkpoint_every_steps > 0, 'checkpoint_every_steps', 'must be > 0')
  _require(config.log_every_steps > 0, 'log_every_steps', 'must be > 0')
  on = config.aug.get('on', 'host')
  _require(on in ('device', 'host'), 'aug.on', f"{on!r} is not 'device' or 'host'")
  for view in ('view1', 'view2'):
    interpolation = config.aug[view].interpolation
    _require(on == 'host' or interpolation in device_augment.INTERPOLATIONS,
             f'aug.{view}.interpolation', f"{interpolation!r} is not one of "
             f"{device_augment.INTERPOLATIONS} (aug.on='device')")
  try:
    models.build_model(config.model)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  _require(config.model.dtype in models.DTYPES, 'model.dtype',
           f'{config.model.dtype!r} is not one of {sorted(models.DTYPES)}')
