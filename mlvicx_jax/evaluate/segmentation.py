"""SIIM-ACR pneumothorax segmentation with a U-Net on the pretrained ResNet18.

SPEC section 4: the encoder is the pretrained trunk (`models.unet.UNet`), the
decoder is randomly initialised. Protocols:
  frozen:   the decoder trains (its BatchNorm in training mode); the
            encoder's parameters and BN statistics are constants and its BN
            runs in inference mode.
  finetune: everything trains.
Label fractions 30% and 100% of the training split (seeded, nested), batch
32, Adam at lr 3e-4 (constant; the paper gives no schedule).

Loss: mean per-image binary cross-entropy over pixels plus mean per-image
soft-Dice loss 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1), p the sigmoid
probabilities; the +1 keeps images without pneumothorax (empty masks) well
defined, pulling their predictions to zero.

Model selection and the paper's number: Dice on the validation split
(threshold 0.5, images with empty prediction and truth count 1, as the SIIM
Kaggle metric), early stopping with patience 10. The record's `val.dice` is
that number at the best epoch; `test.dice` is the held-out test split with
the same parameters (when the build has a test split; otherwise the
validation Dice again, flagged by `test_split: 'validation'`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mlvicx_jax import checkpoint
from mlvicx_jax.evaluate import classify
from mlvicx_jax.evaluate import metrics
from mlvicx_jax.evaluate import report_lib
from mlvicx_jax.models import unet

TASK = 'siim'
DEFAULT_DECODER_WIDTHS = unet.DEFAULT_DECODER_WIDTHS


def base_config() -> ml_collections.ConfigDict:
  """configs/eval/siim.py's defaults: the classification fields, SIIM values."""
  c = classify.base_config(TASK)
  c.label_fractions = (0.3, 1.0)
  c.batch_size = 32
  c.eval_batch_size = 32
  c.num_epochs = 100
  c.decoder_widths = DEFAULT_DECODER_WIDTHS
  c.dice_smooth = 1.0          # soft-Dice loss smoothing
  c.bce_weight = 1.0
  c.dice_weight = 1.0
  c.optim.lr_frozen = 3e-4
  c.optim.lr_finetune = 3e-4
  c.optim.schedule = 'constant'
  c.optim.grad_clip_norm = 0.0  # plain Adam (AdamW with weight decay 0)
  c.save_model = False         # keep the best U-Net under workdir/unets/
  del c.frozen_feature_cache
  return c


def smoke_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  classify.smoke_overrides(c)
  c.decoder_widths = (32, 16, 16, 8, 8)
  c.batch_size = 8
  c.eval_batch_size = 16
  return c


def check_config(config) -> None:
  if config.task != TASK:
    raise ValueError(f"config.task must be 'siim' for segmentation, got {config.task!r}")
  if len(tuple(config.decoder_widths)) != 5:
    raise ValueError('config.decoder_widths needs 5 widths (layer3, layer2, layer1, stem, '
                     f'input resolution), got {tuple(config.decoder_widths)}')
  checked = ml_collections.ConfigDict(config.to_dict())
  checked.task = 'nih'  # everything else is checked as for classification
  classify.check_config(checked)


# --- loss and steps -----------------------------------------------------------------


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


def unet_initializer(model: unet.UNet, backbone: classify.Backbone, image_size: int):
  """rng -> UNet variables: a fresh decoder on the backbone's (pretrained) encoder."""
  decoder = unet.UNetDecoder(tuple(model.decoder_widths))

  def decoder_init(r, shapes):
    del shapes
    maps = jax.eval_shape(lambda: backbone.module.apply(
        backbone.variables, jnp.zeros((1, image_size, image_size, 3)), train=False))['maps']
    return decoder.init(r, [jnp.zeros(m.shape, m.dtype) for m in maps],
                        (image_size, image_size), train=False)

  return classify.make_initializer(model, backbone, 'encoder', 'decoder', decoder_init,
                                   image_size)


def init_unet(backbone: classify.Backbone, decoder_widths, rng, image_size: int):
  """(UNet, variables) for one seed."""
  model = unet.UNet(backbone.module, tuple(decoder_widths))
  return model, unet_initializer(model, backbone, image_size)(rng)


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
      variables = classify.merge_trainable(trainable, fixed)
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


def make_predict_fn(model: unet.UNet):
  """jit(variables, images) -> per-pixel probabilities (N, H, W, 1)."""
  return jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, train=False)))


def per_image_dice(predict, variables, batches) -> tuple[np.ndarray, list]:
  """Dice of every real image of a split (threshold 0.5, empty/empty = 1)."""
  dices, names = [], []
  for batch in batches:
    keep = np.asarray(batch['mask'], bool)
    if not keep.any():
      continue
    probs = np.asarray(predict(variables, jnp.asarray(batch['image'])))[keep]
    dices.append(metrics.dice_per_image(probs, np.asarray(batch['mask_target'])[keep]))
    names += [n.decode() if isinstance(n, bytes) else str(n)
              for n in np.asarray(batch['file_name'])[keep]]
  if not dices:
    raise ValueError('a split yielded no images')
  return np.concatenate(dices), names


# --- one run --------------------------------------------------------------------------


def _dice_ci(per_image: np.ndarray, n_boot: int):
  if n_boot <= 0:
    return None
  try:
    return metrics.bootstrap_ci(per_image, per_image, lambda _, s: float(np.nanmean(s)),
                                n_boot=n_boot, skip_single_valued=False)
  except ValueError as e:
    logging.warning('no bootstrap CI: %s', e)
    return None


@dataclasses.dataclass
class Programs:
  """Model and jitted functions shared by every run of an invocation (compiled once)."""
  model: unet.UNet
  tx: optax.GradientTransformation
  init: Callable
  train_step: Callable
  predict: Callable


def build_programs(config, backbone: classify.Backbone) -> Programs:
  model = unet.UNet(backbone.module, tuple(config.decoder_widths))
  tx = classify.make_optimizer(config)
  step = make_train_step(model, tx, config.protocol, dict(
      smooth=config.dice_smooth, bce_weight=config.bce_weight, dice_weight=config.dice_weight))
  return Programs(model, tx, unet_initializer(model, backbone, config.image_size), step,
                  make_predict_fn(model))


def run_one(config, backbone: classify.Backbone, data: classify.TaskData, fraction: float,
            seed: int, workdir: str, programs: Programs | None = None) -> dict:
  """Trains and evaluates one (label fraction, seed) U-Net; writes its record."""
  start = time.time()
  protocol = config.protocol
  programs = programs or build_programs(config, backbone)
  variables = programs.init(jax.random.PRNGKey(seed))
  tx, step, predict = programs.tx, programs.train_step, programs.predict
  lrs = classify.learning_rates(config, protocol)
  trainable, fixed = classify.split_trainable(variables, protocol, head='decoder')
  n_train = classify.subset_size(data, 'train', fraction)
  steps = max(1, -(-n_train // config.batch_size))
  stream = iter(classify.loader(config, data, 'train', train=True, label_fraction=fraction,
                                seed=seed, num_epochs=None, segmentation=True))

  def train_epoch(state, epoch, lr):
    del epoch
    trainable, fixed, opt_state = state
    opt_state = classify.set_learning_rate(opt_state, lr)
    losses = []
    for batch in classify.epoch_batches(stream, steps):
      batch = {k: jnp.asarray(batch[k]) for k in ('image', 'mask_target', 'mask')}
      trainable, fixed, opt_state, loss = step(trainable, fixed, opt_state, batch)
      losses.append(loss)
    return (trainable, fixed, opt_state), classify.mean_loss(losses)

  def split_dice(state, split):
    v = classify.merge_trainable(state[0], state[1])
    return per_image_dice(predict, v, classify.loader(config, data, split, train=False,
                                                      segmentation=True))

  def evaluate(state):
    dice, _ = split_dice(state, 'validation')
    return float(np.nanmean(dice)), dice

  result = classify.fit((trainable, fixed, tx.init(trainable)), train_epoch, evaluate, lrs,
                        config.patience, log_prefix=f'f={fraction:g} seed={seed} ')
  best = classify.merge_trainable(result.best_state[0], result.best_state[1])
  val_dice = result.best_payload
  if val_dice is None:  # never a finite validation Dice: keep the last epoch
    val_dice, _ = split_dice(result.best_state, 'validation')
  if data.sizes.get('test'):
    test_dice, test_names = split_dice(result.best_state, 'test')
    test_split = 'test'
  else:
    test_dice, test_names = val_dice, []
    test_split = 'validation'

  stem = report_lib.record_stem(dict(task=TASK, protocol=protocol, label_fraction=fraction,
                                     seed=seed, name=config.name or None))
  model_dir = None
  if config.save_model:
    model_dir = classify.save_variables(
        os.path.join(workdir, 'unets', stem[len(report_lib.RECORD_PREFIX):]), best, dict(
            kind='unet', model_config=checkpoint.config_to_json(backbone.model_config),
            decoder_widths=list(config.decoder_widths), protocol=protocol,
            label_fraction=fraction, seed=seed, image_size=config.image_size,
            keep_context_blocks=bool(config.keep_context_blocks), source=backbone.source))
  record = report_lib.make_record(
      TASK, protocol, fraction, seed, backbone.source,
      {'dice': float(np.nanmean(test_dice))}, 'dice',
      best_epoch=result.best_epoch, stop_epoch=result.stop_epoch,
      ci95=_dice_ci(test_dice, config.n_boot),
      val={'dice': float(np.nanmean(val_dice))}, name=config.name or None,
      test_split=test_split, unet=model_dir, history=result.history,
      num_examples={'train': n_train, 'validation': data.sizes['validation'],
                    'test': data.sizes.get('test', 0)},
      wall_time_s=round(time.time() - start, 2), config=config.to_dict())
  predictions = None
  if config.save_predictions:
    predictions = {'per_image_dice': test_dice, 'file_names': np.asarray(test_names, str)}
  path = report_lib.write_run_record(workdir, record, predictions)
  logging.info('%s: validation Dice %.4f, %s Dice %.4f (best epoch %s) -> %s', stem,
               record['val']['dice'], test_split, record['test']['dice'], result.best_epoch,
               path)
  return report_lib.load_run_records(path)[0]


def run(config, workdir: str) -> list[dict]:
  """Every (label fraction, seed) U-Net run of `config`; returns their records.

  Config, checkpoint and prepared data are checked before anything trains.
  """
  check_config(config)
  backbone = classify.load_backbone(config.checkpoint, config.keep_context_blocks,
                                    config.model_variant)
  data = classify.open_task_data(config.data_dir, TASK)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f'config_{TASK}_{config.protocol}.json'), 'w') as f:
    json.dump(config.to_dict(), f, indent=2, default=str)
  programs = build_programs(config, backbone)
  records = []
  for fraction in config.label_fractions:
    for seed in config.seeds:
      stem = report_lib.record_stem(dict(task=TASK, protocol=config.protocol,
                                         label_fraction=fraction, seed=seed,
                                         name=config.name or None))
      done = (classify.existing_record(workdir, stem, backbone.source)
              if config.skip_existing else None)
      if done is not None:
        records.append(done)
        continue
      records.append(run_one(config, backbone, data, float(fraction), int(seed), workdir,
                             programs))
  return records
