"""Segmentation task (SIIM-ACR pneumothorax): a U-Net on the encoder.

SPEC section 4: the encoder is the pretrained trunk (`models.unet.UNet`),
the decoder is randomly initialised. Frozen: the decoder trains (its
BatchNorm in training mode), the encoder's parameters and statistics are
constants and its BN runs in inference mode. Fine-tune: everything trains.
Label fractions 30% and 100%, batch 32, Adam at lr 3e-4 (constant).

Loss: mean per-image BCE over pixels plus mean per-image soft-Dice loss
1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s), p the sigmoid probabilities;
the smoothing s keeps images without pneumothorax well defined.

Metrics (threshold 0.5), each recorded with its empty-prediction floor, what
a model that predicts nothing scores on the same split:
  dice            global Dice, pooled over every pixel of the split (floor 0).
                  The number that stands beside the paper's column and the
                  one early stopping selects on: the paper does not define
                  its Dice, and on its balanced split a per-image Dice that
                  scores empty-on-empty as 1 gives 0.50 to a model that
                  predicts nothing, above every frozen row of its Table III.
  dice_positive   mean Dice over images with a pneumothorax (floor 0).
  dice_per_image  mean per-image Dice, empty on empty = 1 (SIIM's Kaggle
                  metric; floor = the fraction of images without one).
The record's `val` holds them on the validation split at the best epoch
(the paper reports validation Dice); `test` on the held-out test split.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlvicx_jax import checkpoint
from mlvicx_jax import vocabulary
from mlvicx_jax.evaluate import data as data_lib
from mlvicx_jax.evaluate import dice as dice_lib
from mlvicx_jax.evaluate import harness
from mlvicx_jax.evaluate import metrics
from mlvicx_jax.models import unet

TASKS = vocabulary.SEGMENTATION_TASKS
MODELS_SUBDIR = 'unets'
METRIC = 'dice'


def check_config(config) -> None:
  harness.check_config(config, TASKS)
  if len(tuple(config.decoder_widths)) != 5:
    raise ValueError('config.decoder_widths needs 5 widths (layer3, layer2, layer1, stem, '
                     f'input resolution), got {tuple(config.decoder_widths)}')


def segmentation_loss(logits, targets, mask=None, smooth: float = 1.0,
                      bce_weight: float = 1.0, dice_weight: float = 1.0):
  """BCE + soft-Dice loss, each averaged per image, then over real images.

  Returns (loss, {'bce', 'soft_dice'}) with soft_dice the mean soft Dice.
  """
  logits = logits.astype(jnp.float32)
  axes = tuple(range(1, logits.ndim))
  bce = optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=axes)
  probs = jax.nn.sigmoid(logits)
  soft_dice = (2 * (probs * targets).sum(axis=axes) + smooth) / (
      probs.sum(axis=axes) + targets.sum(axis=axes) + smooth)
  per_image = bce_weight * bce + dice_weight * (1 - soft_dice)
  if mask is None:
    mask = jnp.ones(per_image.shape, jnp.float32)
  mask = mask.astype(jnp.float32)
  count = jnp.maximum(mask.sum(), 1.0)
  mean = lambda v: (v * mask).sum() / count
  return mean(per_image), {'bce': mean(bce), 'soft_dice': mean(soft_dice)}


def make_train_step(model: unet.UNet, tx: optax.GradientTransformation, protocol: str,
                    loss_kwargs: dict | None = None):
  """jit(trainable, fixed, opt_state, batch) -> (trainable, fixed, opt_state, loss).

  Frozen: the decoder's params are differentiated and its BN statistics
  update; the encoder runs with inference-mode BN and its statistics are
  put back from `fixed` unchanged.
  """
  frozen = protocol == 'frozen'
  loss_kwargs = loss_kwargs or {}

  def step(trainable, fixed, opt_state, batch):
    def loss_fn(trainable):
      variables = harness.merge_trainable(trainable, fixed)
      logits, updates = model.apply(variables, batch['image'], train=True,
                                    encoder_train=not frozen, mutable=['batch_stats'])
      stats = updates['batch_stats']
      if frozen:
        stats = {**stats, 'encoder': fixed['batch_stats']['encoder']}
      loss, _ = segmentation_loss(logits, batch['mask_target'], batch.get('mask'),
                                  **loss_kwargs)
      return loss, stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    return trainable, {'params': fixed['params'], 'batch_stats': stats}, opt_state, loss

  return jax.jit(step)


@dataclasses.dataclass
class Programs:
  """Model and jitted functions shared by every run of an invocation (compiled once)."""
  model: unet.UNet
  tx: optax.GradientTransformation
  init: Callable
  train_step: Callable
  predict: Callable     # (variables, images) -> per-pixel probabilities (N, H, W, 1)
  trunk_name: str = 'encoder'
  head_name: str = 'decoder'


def build_programs(config, encoder, data) -> Programs:
  del data
  model = unet.UNet(encoder.module, tuple(config.decoder_widths))
  decoder = unet.UNetDecoder(tuple(config.decoder_widths))
  size = config.image_size

  def decoder_init(r, shapes):
    del shapes
    maps = jax.eval_shape(lambda: encoder.module.apply(
        encoder.variables, jnp.zeros((1, size, size, 3)), train=False))['maps']
    return decoder.init(r, [jnp.zeros(m.shape, m.dtype) for m in maps], (size, size),
                        train=False)

  tx = harness.make_optimizer(config)
  step = make_train_step(model, tx, config.protocol, dict(
      smooth=config.dice_smooth, bce_weight=config.bce_weight, dice_weight=config.dice_weight))
  return Programs(model, tx,
                  harness.make_initializer(model, encoder, 'encoder', 'decoder', decoder_init,
                                           size),
                  step, jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, train=False))))


def split_counts(config, programs: Programs, data, variables, split: str):
  """(N, 3) `dice_lib.dice_counts` of every real image of a split, and file names."""
  counts, names = [], []
  for batch in data_lib.loader(config, data, split, train=False, segmentation=True):
    keep = np.asarray(batch['mask'], bool)
    if not keep.any():
      continue
    probs = np.asarray(programs.predict(variables, jnp.asarray(batch['image'])))[keep]
    counts.append(dice_lib.dice_counts(probs, np.asarray(batch['mask_target'])[keep]))
    names += data_lib.file_names(batch, keep)
  if not counts:
    raise ValueError(f'split {split!r} yielded no images')
  return np.concatenate(counts), names


def _dice_ci(counts: np.ndarray, n_boot: int):
  if n_boot <= 0:
    return None
  try:
    return metrics.bootstrap_ci(counts, counts, lambda _, c: dice_lib.dice_summary(c)[METRIC],
                                n_boot=n_boot, skip_single_valued=False)
  except ValueError as e:
    logging.warning('no bootstrap CI: %s', e)
    return None


def fit_and_test(config, programs: Programs, data, subset, variables, *, trunk_key, seed,
                 log_prefix='') -> harness.Outcome:
  """One U-Net run: train with early stopping on validation global Dice, then test."""
  del trunk_key
  steps = max(1, -(-subset.size // config.batch_size))
  stream = iter(data_lib.loader(config, data, 'train', train=True, indices=subset.indices,
                                seed=seed, num_epochs=None, segmentation=True))

  def evaluate(v):
    counts, _ = split_counts(config, programs, data, v, 'validation')
    return dice_lib.dice_summary(counts)[METRIC], counts

  result, best = harness.fit_on_stream(config, programs, variables, stream, steps,
                                       ('image', 'mask_target', 'mask'), evaluate, log_prefix)
  val_counts = result.best_payload
  if val_counts is None:  # never a finite validation Dice: the last epoch is tested
    val_counts, _ = split_counts(config, programs, data, best, 'validation')
  test_counts, test_names = split_counts(config, programs, data, best, 'test')
  predictions = None
  if config.save_predictions:
    inter, pred, true = test_counts.T
    with np.errstate(divide='ignore', invalid='ignore'):
      per_image = np.where(pred + true > 0, 2 * inter / (pred + true), 1.0)
    predictions = {'dice_counts': test_counts, 'per_image_dice': per_image,
                   'file_names': np.asarray(test_names, str)}
  return harness.Outcome(
      result=result, best_variables=best, test=dice_lib.dice_summary(test_counts),
      val=dice_lib.dice_summary(val_counts), metric_name=METRIC, selection_metric=METRIC,
      ci95=_dice_ci(test_counts, config.n_boot), predictions=predictions,
      extra={'floors': dice_lib.empty_prediction_floors(test_counts),
             'val_floors': dice_lib.empty_prediction_floors(val_counts),
             'synthetic_data': bool(data.synthetic)})


def model_meta(config, programs, encoder, data, meta: dict) -> dict:
  del programs, data
  return dict(meta, kind='unet', model_config=checkpoint.config_to_json(encoder.model_config),
              decoder_widths=list(config.decoder_widths))
