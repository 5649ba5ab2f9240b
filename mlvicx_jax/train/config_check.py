"""Validation of a pretraining config before anything is compiled.

Every message names the offending field, so a typo costs seconds, not a
queue slot on a pod.
"""
import jax

from mlvicx_jax import models
from mlvicx_jax import optim
from mlvicx_jax.data import augment
from mlvicx_jax.data import device_augment
from mlvicx_jax.data import mixture
from mlvicx_jax.optim import ema
from mlvicx_jax.train import methods
from mlvicx_jax.train import nonfinite


class ConfigError(ValueError):
  pass


def _require(condition: bool, field: str, message: str):
  if not condition:
    raise ConfigError(f'config.{field}: {message}')


OPTIMIZERS = ('lars', 'sgd', 'adamw')


def _check_method(config) -> None:
  """The loss constants and heads that config.method needs."""
  method, l, m = config.get('method', 'mlvicx'), config.loss, config.model
  _require(method in methods.METHODS, 'method',
           f'unknown method {method!r}; expected one of {methods.METHODS}')
  if method in ('mlvicx', 'vicreg'):
    _require(l.use_global or l.use_local, 'loss.use_global', 'at least one of loss.use_global / '
             'loss.use_local must be True')
    _require(not l.use_global or bool(m.global_head), 'model.global_head',
             'empty, but loss.use_global is True')
    _require(not l.use_local or m.multilevel, 'model.multilevel',
             'False, but loss.use_local is True')
    _require(l.lam >= 0, 'loss.lam', f'must be >= 0, got {l.lam}')
    return
  _require(bool(m.global_head), 'model.global_head', f'empty, but {method} needs a projector')
  if method in ('byol', 'simsiam'):
    _require(bool(m.predictor), 'model.predictor', f'empty, but {method} needs a predictor')
  if method in ('simclr', 'moco_v2'):
    _require(l.temperature > 0, 'loss.temperature', f'must be > 0, got {l.temperature}')
  if method in ('byol', 'moco_v2'):
    _require(0 <= l.momentum <= 1, 'loss.momentum', f'must be in [0, 1], got {l.momentum}')
    _require(l.momentum_schedule in ema.MOMENTUM_SCHEDULES, 'loss.momentum_schedule',
             f'{l.momentum_schedule!r} is not one of {ema.MOMENTUM_SCHEDULES}')
  if method == 'moco_v2':
    _require(l.queue_size % config.global_batch_size == 0, 'loss.queue_size',
             f'{l.queue_size} is not a multiple of global_batch_size '
             f'{config.global_batch_size} (the queue takes whole batches of keys)')
  if method == 'barlow_twins':
    _require(l.lambd >= 0, 'loss.lambd', f'must be >= 0, got {l.lambd}')


def _check_nonfinite(config) -> None:
  policy = config.nonfinite
  _require(policy in nonfinite.POLICIES, 'nonfinite', f'{policy!r} is not one of {nonfinite.POLICIES}')
  for field, low in (('nonfinite_skip_batches', 0), ('nonfinite_lr_steps', 0),
                     ('nonfinite_max_rollbacks', 0)):
    value = config[field]
    _require(isinstance(value, int) and value >= low, field, f'must be an integer >= {low}, got {value!r}')
  scale = config.nonfinite_lr_scale
  _require(0 < scale <= 1, 'nonfinite_lr_scale', f'must be in (0, 1], got {scale}')


# Sections and fields every pretraining config has (configs/nih.py, configs/pretrain/*.py).
REQUIRED_FIELDS = ('dataset', 'data_dir', 'image_size', 'global_batch_size', 'model', 'loss',
                   'optim', 'aug')


def validate(config) -> None:
  """Raises ConfigError naming the first impossible field."""
  missing = [f for f in REQUIRED_FIELDS if f not in config]
  if missing:
    raise ConfigError(f'config: no field {", ".join(missing)}: not a pretraining config '
                      '(configs/nih.py, configs/pretrain/*.py; configs/demo.py is run by '
                      'python -m mlvicx_jax.demo)')
  try:
    components = mixture.parse(config.dataset)  # one build, or 'nih:1,chexpert:2'
  except ValueError as e:
    raise ConfigError(f'config.dataset: {e}') from e
  synthetic = config.get('synthetic_images', 0) > 0 and not config.get('data_dir', '')
  _require(not synthetic or (len(components) == 1 and components[0].name != 'folder'),
           'data_dir', f'empty, and synthetic images are made for one named dataset, not for '
           f'{config.dataset!r}; set config.data_dir to a folder written by '
           'python -m mlvicx_jax.data.prepare')
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
  _require(o.optimizer in OPTIMIZERS, 'optim.optimizer',
           f'{o.optimizer!r} is not one of {OPTIMIZERS}')
  _require(o.base_lr >= 0, 'optim.base_lr', f'must be >= 0, got {o.base_lr}')
  _require(o.weight_decay >= 0, 'optim.weight_decay', f'must be >= 0, got {o.weight_decay}')
  _require(0 <= o.momentum < 1, 'optim.momentum', f'must be in [0, 1), got {o.momentum}')
  _require(o.warmup_epochs >= 0, 'optim.warmup_epochs', f'must be >= 0, got {o.warmup_epochs}')
  _require(o.cosine_over in optim.COSINE_OVER_CHOICES, 'optim.cosine_over',
           f'{o.cosine_over!r} is not one of {optim.COSINE_OVER_CHOICES}')
  _check_method(config)
  if 'monitor' in config:
    mon = config.monitor
    _require(mon.every_steps >= 0, 'monitor.every_steps', f'must be >= 0, got {mon.every_steps}')
    _require(mon.k >= 1, 'monitor.k', f'must be >= 1, got {mon.k}')
    _require(mon.temperature > 0, 'monitor.temperature', f'must be > 0, got {mon.temperature}')
    _require(mon.batch_size >= 1, 'monitor.batch_size', f'must be >= 1, got {mon.batch_size}')
  _require(config.checkpoint_every_steps > 0, 'checkpoint_every_steps', 'must be > 0')
  _check_nonfinite(config)
  _require(config.log_every_steps > 0, 'log_every_steps', 'must be > 0')
  on = config.aug.get('on', 'host')
  _require(on in augment.PLACEMENTS, 'aug.on', f'{on!r} is not one of {augment.PLACEMENTS}')
  on_device = augment.placement(config.aug) == 'device'
  for view in ('view1', 'view2'):
    interpolation = config.aug[view].interpolation
    _require(not on_device or interpolation in device_augment.INTERPOLATIONS,
             f'aug.{view}.interpolation', f'{interpolation!r} is not one of '
             f'{device_augment.INTERPOLATIONS} (views made on the device, aug.on={on!r})')
  try:
    models.build_model(config.model)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  _require(config.model.dtype in models.DTYPES, 'model.dtype',
           f'{config.model.dtype!r} is not one of {sorted(models.DTYPES)}')
