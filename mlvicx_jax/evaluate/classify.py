"""Downstream classification: a (pretrained) ResNet18 plus one linear layer.

SPEC section 4. Protocols:
  frozen:   only the linear layer trains; the backbone's parameters and
            BatchNorm statistics are constants (BN in inference mode), never
            handed to the optimiser.
  finetune: everything trains (BN in training mode).
Label fractions x seeds are independent runs; each stops early on validation
mean AUC (patience 10), is tested with the parameters of its best validation
epoch, and writes a run record (`report_lib`), its test predictions and the
trained classifier (for Grad-CAM).

Frozen probe shortcut (`config.frozen_feature_cache`, on by default): with a
frozen backbone in inference mode the 512-d features of an image never change,
so they are computed once per split and the linear layer trains on them for
all epochs. Augmentation is the official downstream one, a horizontal flip
with probability 1/2 (grayscale conversion is a no-op on X-rays): the cache
holds each training image's features unflipped and flipped, and every epoch
draws one of the two per image. This is the same probe, hundreds of times
cheaper; set the flag to False to run the backbone every step instead.

Optimiser (official `ln_cls.py`): AdamW (betas 0.9/0.999, eps 1e-8, weight
decay 0), lr 3e-3 frozen / 3e-4 fine-tune, cosine annealing with warm
restarts stepped once per epoch (T_0 = 10 epochs, T_mult = 2, eta_min 1e-6),
gradient norm clipped to 1.0, BCE on sigmoid outputs (here: on logits).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Any, Callable, Iterable, Optional, Sequence
import warnings

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mlvicx_jax import checkpoint
from mlvicx_jax import models
from mlvicx_jax import pretrained
from mlvicx_jax.evaluate import early_stopping
from mlvicx_jax.evaluate import metrics
from mlvicx_jax.evaluate import report_lib

TASKS = ('nih', 'vinbig', 'rsna')
PROTOCOLS = ('frozen', 'finetune')
RANDOM_INIT = 'random'  # --config.checkpoint=random: the random-init baseline
CLASSIFIER_KIND = 'classifier'  # meta['kind'] of a saved classifier
CLASSIFIERS_SUBDIR = 'classifiers'


# --- configuration ------------------------------------------------------------------


def base_config(task: str) -> ml_collections.ConfigDict:
  """Fields shared by configs/eval/{nih,vinbig,rsna}.py (official recipe)."""
  c = ml_collections.ConfigDict()
  c.task = task
  c.checkpoint = ''            # pretraining workdir / import_torch output, or 'random'
  c.data_dir = ''              # TFDS data_dir written by `python -m mlvicx_jax.data.prepare`
  c.protocol = 'finetune'      # 'frozen' | 'finetune'
  c.label_fractions = (0.01, 0.1, 0.3, 1.0)
  c.seeds = (0, 1, 2)          # one run per fraction and seed; also picks the label subset
  c.keep_context_blocks = False  # official: the CBAM blocks are dropped downstream
  c.model_variant = 'official'   # architecture of the 'random' baseline only
  c.image_size = 224
  c.batch_size = 128           # official ln_cls.py default
  c.eval_batch_size = 256
  c.num_epochs = 300           # upper bound; early stopping ends runs sooner
  c.patience = 10              # epochs without a better validation mean AUC
  c.worker_count = 4           # grain worker processes (0: decode in this process)
  c.augment = 'official'       # training augmentation: 'official' (resize + h-flip) or 'mild'
  c.frozen_feature_cache = True  # frozen + 'official' augmentation: see the module docstring

  c.optim = ml_collections.ConfigDict()
  c.optim.lr_frozen = 3e-3
  c.optim.lr_finetune = 3e-4
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.grad_clip_norm = 1.0   # <= 0 disables
  c.optim.schedule = 'cosine_warm_restarts'  # or 'constant'
  c.optim.restart_period = 10    # epochs of the first cosine cycle (T_0)
  c.optim.restart_mult = 2       # cycle length growth (T_mult)
  c.optim.min_lr = 1e-6          # eta_min

  c.n_boot = 1000              # bootstrap resamples for the test CI (0: none)
  c.save_classifier = True     # keep the best classifier for Grad-CAM
  c.save_predictions = True
  c.skip_existing = True       # a run whose record exists is not redone
  c.name = ''                  # optional label of what is evaluated (report rows)
  return c


def smoke_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A CPU-minutes run: tiny random-init model, one fraction and seed, 2 epochs."""
  c.checkpoint = RANDOM_INIT
  c.model_variant = 'tiny'
  c.label_fractions = (1.0,)
  c.seeds = (0,)
  c.image_size = 64
  c.batch_size = 16
  c.eval_batch_size = 32
  c.num_epochs = 2
  c.worker_count = 0
  c.n_boot = 100
  return c


def check_config(config) -> None:
  """Rejects bad fields before any data is read, naming the field."""
  if config.task not in TASKS:
    raise ValueError(f'config.task must be one of {TASKS}, got {config.task!r}')
  if config.protocol not in PROTOCOLS:
    raise ValueError(f'config.protocol must be one of {PROTOCOLS}, got {config.protocol!r}')
  if not config.checkpoint:
    raise ValueError("config.checkpoint is empty: give a checkpoint directory or 'random'")
  if not config.data_dir:
    raise ValueError('config.data_dir is empty: give the TFDS data_dir written by '
                     f'`python -m mlvicx_jax.data.prepare --dataset={config.task}`')
  fractions = tuple(config.label_fractions)
  if not fractions or any(not 0 < f <= 1 for f in fractions):
    raise ValueError(f'config.label_fractions must be non-empty values in (0, 1], got {fractions}')
  if not tuple(config.seeds):
    raise ValueError('config.seeds is empty')
  for field in ('image_size', 'batch_size', 'eval_batch_size', 'num_epochs', 'patience'):
    if int(config[field]) < 1:
      raise ValueError(f'config.{field} must be >= 1, got {config[field]}')
  if config.augment not in ('official', 'mild'):
    raise ValueError(f"config.augment must be 'official' or 'mild', got {config.augment!r}")
  if config.optim.schedule not in ('cosine_warm_restarts', 'constant'):
    raise ValueError("config.optim.schedule must be 'cosine_warm_restarts' or 'constant', "
                     f'got {config.optim.schedule!r}')


# --- optimiser ----------------------------------------------------------------------


def cosine_warm_restarts(num_epochs: int, base_lr: float, min_lr: float,
                         period: int, period_mult: int) -> np.ndarray:
  """Per-epoch lr of torch's CosineAnnealingWarmRestarts stepped once per epoch.

  Epoch e of a cycle of length T, at position t, trains with
  min_lr + (base_lr - min_lr) (1 + cos(pi t / T)) / 2; cycles last
  period, period * mult, period * mult^2, ... epochs.
  """
  if period < 1 or period_mult < 1:
    raise ValueError(f'restart period {period} and mult {period_mult} must be >= 1')
  lrs = np.empty(num_epochs, np.float64)
  start, length = 0, period
  for epoch in range(num_epochs):
    if epoch - start >= length:
      start, length = start + length, length * period_mult
    t = epoch - start
    lrs[epoch] = min_lr + (base_lr - min_lr) * (1 + np.cos(np.pi * t / length)) / 2
  return lrs


def learning_rates(config, protocol: str) -> np.ndarray:
  """The lr of every epoch of a run."""
  o = config.optim
  base = o.lr_frozen if protocol == 'frozen' else o.lr_finetune
  if o.schedule == 'constant':
    return np.full(config.num_epochs, base, np.float64)
  return cosine_warm_restarts(config.num_epochs, base, o.min_lr, o.restart_period,
                              o.restart_mult)


def make_optimizer(config) -> optax.GradientTransformation:
  """Clip + AdamW with an injectable lr (set once per epoch by the loops)."""
  o = config.optim

  def chain(learning_rate):
    parts = []
    if o.grad_clip_norm > 0:
      parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
    parts.append(optax.adamw(learning_rate, b1=o.b1, b2=o.b2, eps=o.eps,
                             weight_decay=o.weight_decay))
    return optax.chain(*parts)

  return optax.inject_hyperparams(chain)(learning_rate=0.0)


def set_learning_rate(opt_state, lr: float):
  """Returns opt_state with the injected learning rate replaced."""
  hyperparams = dict(opt_state.hyperparams)
  hyperparams['learning_rate'] = jnp.asarray(lr, jnp.float32)
  return opt_state._replace(hyperparams=hyperparams)


# --- model --------------------------------------------------------------------------


class Classifier(nn.Module):
  """Backbone + one linear layer on the pooled 512-d features -> logits.

  `map_delta` (added to the last stage's map before pooling) and
  `return_map` exist for Grad-CAM: d logits / d map_delta = d logits / d map.
  """
  backbone: nn.Module  # models.build_backbone(cfg, ...); params under 'backbone'
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = True, map_delta=None, return_map: bool = False):
    out = self.backbone(x, train)
    feature_map = out['maps'][-1]
    features = out['features']
    if map_delta is not None:
      feature_map = feature_map.astype(jnp.float32) + map_delta
      features = jnp.mean(feature_map, axis=(1, 2))
    logits = linear_head(self.num_classes)(features)
    return (logits, feature_map) if return_map else logits


def linear_head(num_classes: int) -> nn.Dense:
  """torch.nn.Linear's weight init (uniform +-1/sqrt(fan_in)); zero bias."""
  return nn.Dense(num_classes, name='head',
                  kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'))


@dataclasses.dataclass
class Backbone:
  """The encoder a run starts from."""
  model_config: ml_collections.ConfigDict
  module: nn.Module
  variables: Optional[dict]  # None: random initialisation
  source: str                # checkpoint path (absolute) or 'random'


def load_backbone(checkpoint_path: str, keep_context_blocks: bool = False,
                  model_variant: str = 'official') -> Backbone:
  """Reads the trunk of a pretrained checkpoint, checked against its architecture.

  'random' gives an uninitialised `model_variant` trunk (random-init baseline).
  """
  if checkpoint_path == RANDOM_INIT:
    cfg = models.model_config(model_variant)
    return Backbone(cfg, models.build_backbone(cfg, keep_context_blocks), None, RANDOM_INIT)
  path = os.path.abspath(os.path.expanduser(checkpoint_path))
  if not os.path.isdir(path):
    raise checkpoint.CheckpointError(f'config.checkpoint: directory {path} does not exist')
  encoder = pretrained.load(path)
  cfg = encoder.model_config
  module = models.build_backbone(cfg, keep_context_blocks)
  variables = encoder.backbone_variables(keep_context_blocks)
  expected = jax.eval_shape(lambda: module.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))
  checkpoint.check_tree(expected, variables, f'backbone of checkpoint {path}')
  return Backbone(cfg, module, variables, path)


def make_initializer(model: nn.Module, backbone: Backbone, trunk_name: str, head_name: str,
                     head_init: Callable, image_size: int) -> Callable[[Any], dict]:
  """rng -> variables of `model`: the backbone's trunk under `trunk_name`, a fresh head.

  With a pretrained trunk only the head is initialised (compiling the whole
  model's init costs far more than running it); a random trunk is
  initialised with everything else. `head_init(rng, shapes)` gets the
  eval_shape of the full init. Built once, compiled once for every seed.
  """
  dummy = jnp.zeros((1, image_size, image_size, 3))
  full_init = jax.jit(lambda r: model.init(r, dummy, train=False))
  if backbone.variables is None:
    return full_init
  shapes = jax.eval_shape(full_init, jax.random.PRNGKey(0))
  jitted_head_init = jax.jit(lambda r: head_init(r, shapes))
  trunk = jax.tree.map(jnp.asarray, backbone.variables)

  def init(rng):
    head = jitted_head_init(rng)
    variables = {'params': {trunk_name: trunk['params'], head_name: head['params']},
                 'batch_stats': {trunk_name: trunk.get('batch_stats', {})}}
    if 'batch_stats' in head:
      variables['batch_stats'][head_name] = head['batch_stats']
    checkpoint.check_tree(shapes, variables, f'{type(model).__name__} on {backbone.source}')
    return variables

  return init


def classifier_initializer(model: 'Classifier', backbone: Backbone, image_size: int):
  """rng -> Classifier variables (see make_initializer)."""
  def head_init(r, shapes):
    feature_dim = shapes['params']['head']['kernel'].shape[0]
    return linear_head(model.num_classes).init(r, jnp.zeros((1, feature_dim)))
  return make_initializer(model, backbone, 'backbone', 'head', head_init, image_size)


def init_classifier(backbone: Backbone, num_classes: int, rng, image_size: int):
  """(Classifier, variables): the head (and a 'random' trunk) freshly initialised."""
  model = Classifier(backbone.module, num_classes)
  return model, classifier_initializer(model, backbone, image_size)(rng)


# --- losses and steps ---------------------------------------------------------------


def bce_loss(logits, labels, mask=None):
  """Mean binary cross-entropy over classes and the real (unpadded) examples."""
  per_example = optax.sigmoid_binary_cross_entropy(logits, labels).mean(axis=-1)
  if mask is None:
    return per_example.mean()
  mask = mask.astype(per_example.dtype)
  return (per_example * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def split_trainable(variables: dict, protocol: str, head: str = 'head') -> tuple[dict, dict]:
  """(trainable params, everything else) for a protocol.

  Frozen: only the params under `head` ('head' of a Classifier, 'decoder' of
  a U-Net) are trainable; the backbone's params and BN statistics are passed
  to the step as constants and returned untouched.
  """
  params = variables['params']
  if protocol == 'frozen':
    trainable = {head: params[head]}
    fixed = {'params': {k: v for k, v in params.items() if k != head},
             'batch_stats': variables.get('batch_stats', {})}
  else:
    trainable = params
    fixed = {'params': {}, 'batch_stats': variables.get('batch_stats', {})}
  return trainable, fixed


def merge_trainable(trainable: dict, fixed: dict) -> dict:
  return {'params': {**fixed['params'], **trainable}, 'batch_stats': fixed['batch_stats']}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, protocol: str):
  """jit(trainable, fixed, opt_state, batch) -> (trainable, fixed, opt_state, loss).

  Frozen runs the whole model with train=False (inference-mode BN) and
  differentiates the head only; fine-tune updates BN statistics.
  """
  frozen = protocol == 'frozen'

  def step(trainable, fixed, opt_state, batch):
    def loss_fn(trainable):
      variables = merge_trainable(trainable, fixed)
      if frozen:
        logits = model.apply(variables, batch['image'], train=False)
        new_stats = fixed['batch_stats']
      else:
        logits, updates = model.apply(variables, batch['image'], train=True,
                                      mutable=['batch_stats'])
        new_stats = updates['batch_stats']
      return bce_loss(logits, batch['label'], batch.get('mask')), new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    return trainable, {'params': fixed['params'], 'batch_stats': new_stats}, opt_state, loss

  return jax.jit(step)


def make_head_step(num_classes: int, tx: optax.GradientTransformation):
  """jit(head_params, opt_state, features, labels) for the cached frozen probe."""
  head = linear_head(num_classes)

  def step(head_params, opt_state, features, labels):
    def loss_fn(p):
      return bce_loss(head.apply({'params': p}, features), labels)
    loss, grads = jax.value_and_grad(loss_fn)(head_params)
    updates, opt_state = tx.update(grads, opt_state, head_params)
    return optax.apply_updates(head_params, updates), opt_state, loss

  return jax.jit(step)


def head_scores(num_classes: int, head_params, features) -> np.ndarray:
  """Sigmoid outputs of the linear layer on cached features."""
  logits = linear_head(num_classes).apply({'params': head_params}, jnp.asarray(features))
  return np.asarray(jax.nn.sigmoid(logits), np.float64)


def make_predict_fn(model: nn.Module):
  """jit(variables, images) -> sigmoid probabilities (inference mode)."""
  return jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, train=False)))


def collect(batches: Iterable[dict],
            fn: Callable[[Any], Any]) -> tuple[np.ndarray, np.ndarray, list]:
  """Runs fn over each batch's images; keeps real rows: (outputs, labels, file names)."""
  outputs, labels, names = [], [], []
  for batch in batches:
    keep = np.asarray(batch['mask'], bool) if 'mask' in batch else slice(None)
    outputs.append(np.asarray(fn(batch['image']))[keep])
    labels.append(np.asarray(batch['label'])[keep])
    if 'file_name' in batch:
      names += [n.decode() if isinstance(n, bytes) else str(n)
                for n in np.asarray(batch['file_name'])[keep]]
  if not outputs:
    raise ValueError('a split yielded no batches')
  return np.concatenate(outputs), np.concatenate(labels), names


# --- early stopping -----------------------------------------------------------------


@dataclasses.dataclass
class FitResult:
  best_state: Any
  best_epoch: Optional[int]
  stop_epoch: int
  best_payload: Any          # what `evaluate` returned with the best score
  history: list              # per epoch: {'epoch', 'lr', 'train_loss', 'val_score'}


def fit(state, train_epoch: Callable, evaluate: Callable, lrs: Sequence[float],
        patience: int, log_prefix: str = '') -> FitResult:
  """Trains epoch by epoch, keeping the state of the best validation score.

  Args:
    state: anything `train_epoch` takes and returns (jax arrays are immutable,
      so keeping a reference is keeping a copy).
    train_epoch: (state, epoch, lr) -> (state, mean training loss).
    evaluate: state -> (validation score, payload); larger is better.
    lrs: learning rate of each epoch; its length is the epoch budget.
    patience: epochs without improvement that stop training.
  """
  stopper = early_stopping.EarlyStopping(patience=patience, mode='max')
  best_state, best_payload, history = state, None, []
  epoch = -1
  for epoch, lr in enumerate(lrs):
    start = time.time()
    state, loss = train_epoch(state, epoch, float(lr))
    score, payload = evaluate(state)
    stop = stopper.update(epoch, score)
    if stopper.improved:
      best_state, best_payload = state, payload
    history.append({'epoch': epoch, 'lr': float(lr), 'train_loss': float(loss),
                    'val_score': float(score)})
    logging.info('%sepoch %d lr %.3g loss %.4f val %.4f%s (%.1fs)', log_prefix, epoch, lr,
                 loss, score, ' *' if stopper.improved else '', time.time() - start)
    if stop:
      break
  return FitResult(best_state, stopper.best_epoch, epoch, best_payload, history)


def mean_loss(losses) -> float:
  """Mean of an epoch's step losses (NaN when the epoch had no step)."""
  return float(np.mean(jax.device_get(losses))) if losses else float('nan')


def validation_score(labels: np.ndarray, scores: np.ndarray) -> float:
  """Model selection metric: mean AUC over the classes defined on validation."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', metrics.SingleValuedClassWarning)
    value = metrics.mean_auc(labels, scores)
  return value if np.isfinite(value) else float('nan')


def summary(labels, scores, class_names) -> dict:
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', metrics.SingleValuedClassWarning)
    return metrics.classification_summary(labels, scores, class_names)


# --- data ---------------------------------------------------------------------------

SPLITS = ('train', 'validation', 'test')


def augment_config(name: str) -> ml_collections.ConfigDict:
  """Training augmentation of the downstream loaders.

  'official': the official downstream transform, resize the whole image and
  flip horizontally with probability 1/2 (its RandomGrayscale does nothing to
  an X-ray). 'mild': the data package's default (crop 70-100 %, flip,
  brightness/contrast jitter).
  """
  from mlvicx_jax.data import augment  # pylint: disable=g-import-not-at-top
  aug = augment.default_classification_augment_config()
  if name == 'official':
    aug.view.crop_scale = (1.0, 1.0)
    aug.view.crop_ratio = (1.0, 1.0)
    aug.view.jitter_prob = 0.0
    aug.view.rotation_prob = 0.0
  elif name != 'mild':
    raise ValueError(f"config.augment must be 'official' or 'mild', got {name!r}")
  return aug


@dataclasses.dataclass
class TaskData:
  """A prepared dataset and how to read it."""
  data_dir: str
  dataset: str               # 'name/config' as built under data_dir
  class_names: tuple
  sizes: dict                # split -> number of examples


def open_task_data(data_dir: str, task: str, splits: Sequence[str] = SPLITS) -> TaskData:
  """Finds the prepared build of `task`; error naming the folder and the prepare command."""
  from mlvicx_jax.data import info as info_lib  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.data import pipelines  # pylint: disable=g-import-not-at-top
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  prepare_cmd = (f'python -m mlvicx_jax.data.prepare --dataset={task} '
                 f'--manual_dir=<downloaded {task} files> --data_dir={data_dir}')
  expected = os.path.join(data_dir, task)
  if not os.path.isdir(expected):
    raise FileNotFoundError(
        f'{task} has not been prepared: expected the TFDS directory {expected} '
        f'(under config.data_dir={data_dir}); build it with: {prepare_cmd}')
  try:
    dataset = pipelines.resolve_dataset(data_dir, task)
    sizes = {split: pipelines.num_examples(data_dir, dataset, split) for split in splits}
  except (FileNotFoundError, ValueError, KeyError, OSError) as e:
    raise FileNotFoundError(f'cannot read the prepared {task} data in {expected}: {e}. '
                            f'Rebuild it with: {prepare_cmd} --overwrite') from e
  for split in splits:
    if split != 'test' and not sizes[split]:
      raise ValueError(f'{expected}: split {split!r} is empty')
  return TaskData(data_dir, dataset, info_lib.dataset_info(task).class_names, sizes)


def loader(config, data: TaskData, split: str, *, train: bool, label_fraction: float = 1.0,
           seed: int = 0, num_epochs: Optional[int] = 1, batch_size: Optional[int] = None,
           segmentation: bool = False):
  """A grain loader of one split (training: shuffled, augmented, label subset)."""
  from mlvicx_jax.data import pipelines  # pylint: disable=g-import-not-at-top
  make = pipelines.segmentation_loader if segmentation else pipelines.classification_loader
  if batch_size is None:
    batch_size = config.batch_size if train else config.eval_batch_size
  return make(data.data_dir, data.dataset, split=split, image_size=config.image_size,
              batch_size=batch_size, seed=seed, train=train, label_fraction=label_fraction,
              worker_count=config.worker_count, num_epochs=num_epochs,
              aug=augment_config(config.augment), shard_index=0, shard_count=1)


def subset_size(data: TaskData, split: str, fraction: float) -> int:
  from mlvicx_jax.data import splits as splits_lib  # pylint: disable=g-import-not-at-top
  return splits_lib.subset_size(data.sizes[split], fraction)


def real_rows(batch: dict) -> dict:
  """The batch without its padding rows (they are at the end).

  Training BatchNorm must not see padding; the one short batch at the end of
  a stream costs one extra compilation.
  """
  count = int(np.asarray(batch['mask']).sum())
  if count == len(batch['mask']):
    return batch
  return {k: np.asarray(v)[:count] for k, v in batch.items()}


def epoch_batches(stream, steps: int):
  """The next `steps` real batches of an endless stream (None when it ends)."""
  for _ in range(steps):
    batch = next(stream, None)
    if batch is None:
      return
    batch = real_rows(batch)
    if len(batch['mask']) >= 2:  # BN statistics of one example are meaningless
      yield batch


# --- one run --------------------------------------------------------------------------


def _image_fn(predict, variables):
  return lambda images: predict(variables, jnp.asarray(images))


class FeatureCache:
  """Frozen-backbone features of whole splits, computed once per backbone."""

  def __init__(self, config, data: TaskData):
    self._config, self._data = config, data
    self._store = {}

  def features(self, key, embed, variables, split: str, label_fraction: float = 1.0,
               seed: int = 0, flips: bool = False):
    """(features, labels, file names[, flipped features]) of a split (subset).

    `embed(variables, images)` gives the features; `key` names the backbone.
    """
    cache_key = (key, split, label_fraction, seed if label_fraction < 1 else 0, flips)
    if cache_key not in self._store:
      batches = loader(self._config, self._data, split, train=False,
                       label_fraction=label_fraction, seed=seed)

      def fn(images):
        images = jnp.asarray(images)
        out = embed(variables, images)
        if flips:  # horizontal flip: the width axis of NHWC
          out = jnp.concatenate([out, embed(variables, images[:, :, ::-1, :])], axis=-1)
        return out

      feats, labels, names = collect(batches, fn)
      if flips:
        half = feats.shape[1] // 2
        self._store[cache_key] = (feats[:, :half], labels, names, feats[:, half:])
      else:
        self._store[cache_key] = (feats, labels, names)
    return self._store[cache_key]


def _backbone_variables(variables: dict) -> dict:
  return {'params': variables['params']['backbone'],
          'batch_stats': variables.get('batch_stats', {}).get('backbone', {})}


@dataclasses.dataclass
class Programs:
  """The model and jitted functions shared by every run of an invocation.

  Built once, so the runs of all label fractions and seeds compile once.
  """
  model: Classifier
  tx: optax.GradientTransformation
  init: Callable        # rng -> variables
  train_step: Callable  # make_train_step(model, tx, protocol)
  head_step: Callable   # make_head_step(num_classes, tx), cached frozen probe
  predict: Callable     # (variables, images) -> probabilities
  embed: Callable       # (backbone variables, images) -> 512-d features


def build_programs(config, backbone: Backbone, num_classes: int) -> Programs:
  model = Classifier(backbone.module, num_classes)
  tx = make_optimizer(config)
  return Programs(
      model=model, tx=tx, init=classifier_initializer(model, backbone, config.image_size),
      train_step=make_train_step(model, tx, config.protocol),
      head_step=make_head_step(num_classes, tx), predict=make_predict_fn(model),
      embed=jax.jit(lambda v, x: backbone.module.apply(v, x, train=False)['features']))


def _train_cached_probe(config, programs: Programs, variables, cache_key, cache, fraction,
                        seed, lrs):
  """Frozen probe on cached features: (FitResult, best variables, test outputs, n_train)."""
  num_classes, tx = programs.model.num_classes, programs.tx
  bvars = _backbone_variables(variables)
  features = functools.partial(cache.features, cache_key, programs.embed, bvars)
  train_x, train_y, _, train_x_flipped = features('train', fraction, seed, flips=True)
  val_x, val_y, _ = features('validation')
  step = programs.head_step
  rng = np.random.default_rng(seed)
  n = len(train_x)
  batch = min(config.batch_size, n)

  def train_epoch(state, epoch, lr):
    del epoch
    head, opt_state = state
    opt_state = set_learning_rate(opt_state, lr)
    order = rng.permutation(n)
    flip = rng.random(n) < 0.5  # the official h-flip, one draw per image and epoch
    x = np.where(flip[:, None], train_x_flipped, train_x)[order]
    y = train_y[order]
    losses = []
    for start in range(0, n - batch + 1, batch):  # drop the remainder, as the official loader
      head, opt_state, loss = step(head, opt_state, x[start:start + batch], y[start:start + batch])
      losses.append(loss)
    return (head, opt_state), mean_loss(losses)

  def evaluate(state):
    scores = head_scores(num_classes, state[0], val_x)
    return validation_score(val_y, scores), (val_y, scores)

  head = variables['params']['head']
  result = fit((head, tx.init(head)), train_epoch, evaluate, lrs, config.patience,
               log_prefix=f'f={fraction:g} seed={seed} ')
  best_head = result.best_state[0]
  test_x, test_y, test_names = features('test')
  best = {'params': {**variables['params'], 'head': best_head},
          'batch_stats': variables.get('batch_stats', {})}
  return result, best, (test_y, head_scores(num_classes, best_head, test_x), test_names), n


def _train_full(config, programs: Programs, variables, data, fraction, seed, lrs):
  """Fine-tune, or the frozen probe through the backbone every step."""
  step, predict = programs.train_step, programs.predict
  trainable, fixed = split_trainable(variables, config.protocol)
  n = subset_size(data, 'train', fraction)
  steps = max(1, -(-n // config.batch_size))
  stream = iter(loader(config, data, 'train', train=True, label_fraction=fraction, seed=seed,
                       num_epochs=None))

  def train_epoch(state, epoch, lr):
    del epoch
    trainable, fixed, opt_state = state
    opt_state = set_learning_rate(opt_state, lr)
    losses = []
    for batch in epoch_batches(stream, steps):
      batch = {k: jnp.asarray(batch[k]) for k in ('image', 'label', 'mask')}
      trainable, fixed, opt_state, loss = step(trainable, fixed, opt_state, batch)
      losses.append(loss)
    return (trainable, fixed, opt_state), mean_loss(losses)

  def evaluate_split(state, split):
    v = merge_trainable(state[0], state[1])
    return collect(loader(config, data, split, train=False), _image_fn(predict, v))

  def evaluate(state):
    scores, labels, _ = evaluate_split(state, 'validation')
    return validation_score(labels, scores), (labels, scores)

  result = fit((trainable, fixed, programs.tx.init(trainable)), train_epoch, evaluate, lrs,
               config.patience, log_prefix=f'f={fraction:g} seed={seed} ')
  best = merge_trainable(result.best_state[0], result.best_state[1])
  scores, labels, names = evaluate_split(result.best_state, 'test')
  return result, best, (labels, scores, names), n


def _bootstrap_ci(labels, scores, metric_name: str, n_boot: int):
  if n_boot <= 0:
    return None
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      if metric_name == 'mean_auc':
        return metrics.bootstrap_mean_auc_ci(labels, scores, n_boot=n_boot)
      return metrics.bootstrap_ci(labels, scores, metrics.accuracy, n_boot=n_boot)
  except ValueError as e:  # e.g. every resample single-valued on a tiny test set
    logging.warning('no bootstrap CI: %s', e)
    return None


def run_one(config, backbone: Backbone, data: TaskData, cache: FeatureCache,
            fraction: float, seed: int, workdir: str, programs: Optional[Programs] = None) -> dict:
  """Trains and tests one (label fraction, seed) run; writes its record."""
  start = time.time()
  protocol = config.protocol
  if programs is None:
    programs = build_programs(config, backbone, len(data.class_names))
  variables = programs.init(jax.random.PRNGKey(seed))
  lrs = learning_rates(config, protocol)
  use_cache = (protocol == 'frozen' and config.frozen_feature_cache
               and config.augment == 'official')
  if use_cache:
    key = backbone.source if backbone.variables is not None else (RANDOM_INIT, seed)
    result, best, (test_y, test_scores, test_names), n_train = _train_cached_probe(
        config, programs, variables, key, cache, fraction, seed, lrs)
  else:
    result, best, (test_y, test_scores, test_names), n_train = _train_full(
        config, programs, variables, data, fraction, seed, lrs)
  if result.best_epoch is None:
    logging.warning('validation mean AUC was never defined; testing the last epoch')
  val_y, val_scores = result.best_payload if result.best_payload is not None else (None, None)

  class_names = list(data.class_names)
  stem = report_lib.record_stem(dict(task=config.task, protocol=protocol,
                                     label_fraction=fraction, seed=seed,
                                     name=config.name or None))
  classifier_dir = None
  if config.save_classifier:
    classifier_dir = save_classifier(
        os.path.join(workdir, CLASSIFIERS_SUBDIR, stem[len(report_lib.RECORD_PREFIX):]), best,
        backbone.model_config, dict(task=config.task, class_names=class_names, protocol=protocol,
             label_fraction=fraction, seed=seed, image_size=config.image_size,
             keep_context_blocks=bool(config.keep_context_blocks), source=backbone.source,
             best_epoch=result.best_epoch))
  test = summary(test_y, test_scores, class_names)
  metric_name = 'accuracy' if config.task == 'rsna' else 'mean_auc'
  record = report_lib.make_record(
      config.task, protocol, fraction, seed, backbone.source, test, metric_name,
      best_epoch=result.best_epoch, stop_epoch=result.stop_epoch,
      ci95=_bootstrap_ci(test_y, test_scores, metric_name, config.n_boot),
      val=None if val_y is None else summary(val_y, val_scores, class_names),
      name=config.name or None, classifier=classifier_dir, history=result.history,
      num_examples={'train': n_train, 'validation': data.sizes['validation'],
                    'test': data.sizes['test']},
      feature_cache=use_cache, wall_time_s=round(time.time() - start, 2),
      config=config.to_dict())
  predictions = None
  if config.save_predictions:
    predictions = {'labels': test_y, 'scores': test_scores, 'class_names': class_names,
                   'file_names': np.asarray(test_names, dtype=str)}
  path = report_lib.write_run_record(workdir, record, predictions)
  logging.info('%s: test %s %.4f (best epoch %s) -> %s', stem, metric_name,
               test[metric_name], result.best_epoch, path)
  return report_lib.load_run_records(path)[0]


# --- saved classifiers --------------------------------------------------------------


def save_variables(directory: str, variables: dict, meta: dict) -> str:
  """checkpoint.save_model into `directory`, replacing an earlier run's copy."""
  if os.path.exists(directory):
    shutil.rmtree(directory)  # step 0 of an existing manager cannot be overwritten
  return checkpoint.save_model(directory, jax.device_get(variables), meta)


def save_classifier(directory: str, variables: dict, model_config, meta: dict) -> str:
  """Writes a trained classifier with what Grad-CAM needs to rebuild it."""
  return save_variables(directory, variables, dict(
      meta, kind=CLASSIFIER_KIND, model_config=checkpoint.config_to_json(model_config)))


def restore_classifier(directory: str) -> tuple[Classifier, dict]:
  """(Classifier, variables) of a directory written by `save_classifier`."""
  variables, meta, _ = checkpoint.restore_model(directory)
  if meta.get('kind') != CLASSIFIER_KIND:
    raise checkpoint.CheckpointError(f'{directory} is not a classifier saved by '
                                     'mlvicx_jax.evaluate (meta kind missing)')
  cfg = checkpoint.model_config_from_json(meta['model_config'])
  model = Classifier(models.build_backbone(cfg, meta['keep_context_blocks']),
                     len(meta['class_names']))
  expected = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))
  checkpoint.check_tree(expected, variables, f'classifier {directory}')
  return model, jax.tree.map(jnp.asarray, variables)


# --- the program ----------------------------------------------------------------------


def existing_record(workdir: str, stem: str, source: str) -> Optional[dict]:
  """The record a previous invocation wrote for this run, if any.

  A record of another checkpoint under the same name is an error rather than
  a silent mix of two models' results.
  """
  path = os.path.join(workdir, stem + '.json')
  if not os.path.exists(path):
    return None
  record = report_lib.load_run_records(path)[0]
  if record['checkpoint'] != source:
    raise ValueError(f'{path} holds a run of checkpoint {record["checkpoint"]}, not {source}; '
                     'use another --workdir or --config.skip_existing=False to redo it')
  logging.info('%s exists; skipping that run', path)
  return record


def run(config, workdir: str) -> list[dict]:
  """Every (label fraction, seed) run of `config`; returns their validated records.

  Inputs are checked (config, checkpoint architecture, prepared data) before
  anything trains. Runs whose record already exists in `workdir` are loaded
  instead of redone when config.skip_existing.
  """
  check_config(config)
  backbone = load_backbone(config.checkpoint, config.keep_context_blocks, config.model_variant)
  data = open_task_data(config.data_dir, config.task)
  if not data.sizes['test']:
    raise ValueError(f'{data.dataset} in {data.data_dir}: the test split is empty')
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f'config_{config.task}_{config.protocol}.json'), 'w') as f:
    json.dump(config.to_dict(), f, indent=2, default=str)
  cache = FeatureCache(config, data)
  programs = build_programs(config, backbone, len(data.class_names))
  records = []
  for fraction in config.label_fractions:
    for seed in config.seeds:
      stem = report_lib.record_stem(dict(task=config.task, protocol=config.protocol,
                                         label_fraction=fraction, seed=seed,
                                         name=config.name or None))
      done = existing_record(workdir, stem, backbone.source) if config.skip_existing else None
      if done is not None:
        records.append(done)
        continue
      records.append(run_one(config, backbone, data, cache, float(fraction), int(seed), workdir,
                             programs))
  return records
