"""Classification (NIH, VinBig-CXR, RSNA, CheXpert): the encoder plus one linear layer.

SPEC section 4. BCE on logits; the reported metric is mean AUC (NIH,
VinBig, CheXpert) or accuracy at probability 0.5 (RSNA, the paper's), and
early stopping selects on that same metric on the validation split. Records
hold both AUC and, for RSNA, accuracy.

Masked labels (CheXpert's uncertain ones under the 'ignore' policy,
data/label_policy.py) count nowhere: the loss averages over the unmasked
entries, and the collected label arrays carry them as NaN, which every AUC
(validation, test, bootstrap) leaves out of that class.

Beyond AUC, every run records calibration on test and validation (ECE over
equal-width and equal-mass bins, Brier score) and operating points:
thresholds chosen per class on validation (Youden's J, and the target
sensitivity `config.target_sensitivity`), tested with bootstrap intervals;
optionally a temperature fitted on validation (`config.calibration`). See
`calibration_record`.

Frozen probe shortcut (`config.frozen_feature_cache`, on by default): with a
frozen encoder in inference mode the pooled features of an image never
change, so they are computed once per trunk for every training, validation
and test image, and the linear layer trains on them for all epochs.
Augmentation is the official downstream one, a horizontal flip with
probability 1/2: the cache holds each training image's features unflipped
and flipped, and every epoch draws one of the two per image. The same probe
as running the trunk every step, hundreds of times cheaper; set the flag to
False to run the trunk every step instead.
"""
from __future__ import annotations

import dataclasses
from typing import Callable
import warnings

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlvicx_jax import checkpoint
from mlvicx_jax import models
from mlvicx_jax import vocabulary
from mlvicx_jax.evaluate import calibration_record
from mlvicx_jax.evaluate import data as data_lib
from mlvicx_jax.evaluate import explain
from mlvicx_jax.evaluate import harness
from mlvicx_jax.evaluate import metrics
from mlvicx_jax.models import classifier as classifier_lib

TASKS = vocabulary.CLASSIFICATION_TASKS
MODELS_SUBDIR = 'classifiers'
MODEL_KIND = 'classifier'  # meta['kind'] of a saved classifier


def check_config(config) -> None:
  harness.check_config(config, TASKS)
  if 'uncertain' in config:
    from mlvicx_jax.data import label_policy  # pylint: disable=g-import-not-at-top
    try:
      label_policy.check_policy(config.uncertain)
    except ValueError as e:
      raise ValueError(f'config.{e}') from None
  target = config.get('target_sensitivity', 0.9)
  if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target <= 1:
    raise ValueError(f'config.target_sensitivity must be a number in [0, 1], got {target!r}')
  temperature = config.get('calibration', {}).get('temperature', False)
  if not isinstance(temperature, bool):
    raise ValueError(f'config.calibration.temperature must be True or False, got '
                     f'{temperature!r}')
  if config.get('localise') is not None:
    explain.check_config(config)


def reported_metric(task: str) -> str:
  """The paper's metric of a task; early stopping selects on it too."""
  return 'accuracy' if task == 'rsna' else 'mean_auc'


def bce_loss(logits, labels, mask=None, label_mask=None):
  """Mean binary cross-entropy over the labelled entries of the real examples.

  mask (B,): real (unpadded) examples; label_mask (B, K): labelled entries
  (False: masked, e.g. an ignored uncertain label). Without masks it is the
  mean over every entry, as before label masks existed.
  """
  per_entry = optax.sigmoid_binary_cross_entropy(logits, labels)
  weight = jnp.ones_like(per_entry)
  if mask is not None:
    weight = weight * mask.astype(per_entry.dtype)[:, None]
  if label_mask is not None:
    weight = weight * label_mask.astype(per_entry.dtype)
  return (per_entry * weight).sum() / jnp.maximum(weight.sum(), 1.0)


def split_masked(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Collected labels (NaN: masked) -> (labels with 0 there, label_mask)."""
  labels = np.asarray(labels, np.float32)
  label_mask = ~np.isnan(labels)
  return np.where(label_mask, labels, np.float32(0)), label_mask


def summary(labels, scores, class_names) -> dict:
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', metrics.SingleValuedClassWarning)
    return metrics.classification_summary(labels, scores, class_names)


def selection_score(task: str, labels, scores) -> float:
  """The validation value early stopping maximises (NaN when undefined)."""
  value = summary(labels, scores, None).get(reported_metric(task), float('nan'))
  return value if np.isfinite(value) else float('nan')


# --- programs -----------------------------------------------------------------------


def make_train_step(model, tx: optax.GradientTransformation, protocol: str):
  """jit(trainable, fixed, opt_state, batch) -> (trainable, fixed, opt_state, loss).

  Frozen runs the whole model with train=False (inference-mode BN) and
  differentiates the head only; fine-tune updates BN statistics.
  """
  frozen = protocol == 'frozen'

  def step(trainable, fixed, opt_state, batch):
    def loss_fn(trainable):
      variables = harness.merge_trainable(trainable, fixed)
      if frozen:
        logits = model.apply(variables, batch['image'], train=False)
        new_stats = fixed['batch_stats']
      else:
        logits, updates = model.apply(variables, batch['image'], train=True,
                                      mutable=['batch_stats'])
        new_stats = updates['batch_stats']
      return bce_loss(logits, batch['label'], batch.get('mask'),
                      batch.get('label_mask')), new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    return trainable, {'params': fixed['params'], 'batch_stats': new_stats}, opt_state, loss

  return jax.jit(step)


def make_head_step(num_classes: int, tx: optax.GradientTransformation):
  """jit(head_params, opt_state, features, labels, label_mask) for the cached frozen probe."""
  head = classifier_lib.linear_head(num_classes)

  def step(head_params, opt_state, features, labels, label_mask):
    def loss_fn(p):
      return bce_loss(head.apply({'params': p}, features), labels, label_mask=label_mask)
    loss, grads = jax.value_and_grad(loss_fn)(head_params)
    updates, opt_state = tx.update(grads, opt_state, head_params)
    return optax.apply_updates(head_params, updates), opt_state, loss

  return jax.jit(step)


@dataclasses.dataclass
class Programs:
  """The model and jitted functions shared by every run (compiled once)."""
  model: classifier_lib.Classifier
  tx: optax.GradientTransformation
  init: Callable        # rng -> variables
  train_step: Callable  # make_train_step(model, tx, protocol)
  head_step: Callable   # cached frozen probe
  head_scores: Callable  # (head params, features) -> probabilities
  predict: Callable     # (variables, images) -> probabilities
  embed: Callable       # (trunk variables, images) -> pooled features
  cache: dict           # trunk key -> {split: (features, labels, names[, flipped])}
  trunk_name: str = 'backbone'
  head_name: str = 'head'


def build_programs(config, encoder, data: data_lib.TaskData) -> Programs:
  num_classes = len(data.class_names)
  model = classifier_lib.Classifier(encoder.module, num_classes)
  tx = harness.make_optimizer(config)

  def head_init(r, shapes):
    feature_dim = shapes['params']['head']['kernel'].shape[0]
    return classifier_lib.linear_head(num_classes).init(r, jnp.zeros((1, feature_dim)))

  head = classifier_lib.linear_head(num_classes)
  return Programs(
      model=model, tx=tx,
      init=harness.make_initializer(model, encoder, 'backbone', 'head', head_init,
                                    config.image_size),
      train_step=make_train_step(model, tx, config.protocol),
      head_step=make_head_step(num_classes, tx),
      head_scores=jax.jit(lambda p, x: jax.nn.sigmoid(head.apply({'params': p}, x))),
      predict=jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, train=False))),
      embed=jax.jit(lambda v, x: encoder.module.apply(v, x, train=False)['features']),
      cache={})


def trunk_variables(variables: dict) -> dict:
  return {'params': variables['params']['backbone'],
          'batch_stats': variables.get('batch_stats', {}).get('backbone', {})}


def split_features(config, programs: Programs, data, trunk, split: str, flips: bool):
  """(features, labels, file names[, flipped features]) of a whole split, record order."""
  def fn(images):
    images = jnp.asarray(images)
    out = programs.embed(trunk, images)
    if flips:  # horizontal flip: the width axis of NHWC
      out = jnp.concatenate([out, programs.embed(trunk, images[:, :, ::-1, :])], axis=-1)
    return out

  feats, labels, names = data_lib.collect(data_lib.loader(config, data, split, train=False), fn)
  if not flips:
    return feats, labels, names
  half = feats.shape[1] // 2
  return feats[:, :half], labels, names, feats[:, half:]


def _fit_cached_probe(config, programs: Programs, data, subset, variables, trunk_key, seed,
                      log_prefix):
  """Frozen probe on cached features: (FitResult, best variables, test (labels, scores, names))."""
  if trunk_key not in programs.cache:
    trunk = trunk_variables(variables)
    programs.cache.clear()  # one trunk's features at a time
    programs.cache[trunk_key] = {
        'train': split_features(config, programs, data, trunk, 'train', flips=True),
        'validation': split_features(config, programs, data, trunk, 'validation', False),
        'test': split_features(config, programs, data, trunk, 'test', False)}
  cached = programs.cache[trunk_key]
  train_x, train_y, _, train_x_flipped = cached['train']
  if subset.indices is not None:
    train_x, train_y = train_x[subset.indices], train_y[subset.indices]
    train_x_flipped = train_x_flipped[subset.indices]
  train_y, train_mask = split_masked(train_y)
  val_x, val_y, _ = cached['validation']
  rng = np.random.default_rng(seed)
  n = len(train_x)
  batch = min(config.batch_size, n)

  def train_epoch(state, epoch, lr):
    del epoch
    head, opt_state = state
    opt_state = harness.set_learning_rate(opt_state, lr)
    order = rng.permutation(n)
    flip = rng.random(n) < 0.5  # the official h-flip, one draw per image and epoch
    x = np.where(flip[:, None], train_x_flipped, train_x)[order]
    y, y_mask = train_y[order], train_mask[order]
    losses = []
    for start in range(0, n - batch + 1, batch):  # drop the remainder, as the official loader
      part = slice(start, start + batch)
      head, opt_state, loss = programs.head_step(head, opt_state, x[part], y[part], y_mask[part])
      losses.append(loss)
    return (head, opt_state), harness.mean_loss(losses)

  def evaluate(state):
    scores = np.asarray(programs.head_scores(state[0], val_x), np.float64)
    return selection_score(config.task, val_y, scores), (val_y, scores)

  head = variables['params']['head']
  result = harness.fit((head, programs.tx.init(head)), train_epoch, evaluate,
                       harness.learning_rates(config), config.patience, log_prefix)
  best_head = result.best_state[0]
  test_x, test_y, test_names = cached['test']
  best = {'params': {**variables['params'], 'head': best_head},
          'batch_stats': variables.get('batch_stats', {})}
  test_scores = np.asarray(programs.head_scores(best_head, test_x), np.float64)
  return result, best, (test_y, test_scores, test_names)


def _fit_full(config, programs: Programs, data, subset, variables, seed, log_prefix):
  """Fine-tune, or the frozen probe through the trunk every step."""
  steps = max(1, -(-subset.size // config.batch_size))
  stream = iter(data_lib.loader(config, data, 'train', train=True, indices=subset.indices,
                                seed=seed, num_epochs=None))

  def split_scores(v, split):
    return data_lib.collect(data_lib.loader(config, data, split, train=False),
                            lambda images: programs.predict(v, jnp.asarray(images)))

  def evaluate(v):
    scores, labels, _ = split_scores(v, 'validation')
    return selection_score(config.task, labels, scores), (labels, scores)

  result, best = harness.fit_on_stream(config, programs, variables, stream, steps,
                                       ('image', 'label', 'mask', 'label_mask'), evaluate,
                                       log_prefix)
  scores, labels, names = split_scores(best, 'test')
  return result, best, (labels, scores, names)


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


def fit_and_test(config, programs: Programs, data, subset, variables, *, trunk_key, seed,
                 log_prefix='') -> harness.Outcome:
  """One run: train with early stopping, test the best epoch's parameters."""
  use_cache = (config.protocol == 'frozen' and config.frozen_feature_cache
               and config.augment == 'official')
  if use_cache:
    result, best, (test_y, test_scores, test_names) = _fit_cached_probe(
        config, programs, data, subset, variables, trunk_key, seed, log_prefix)
  else:
    result, best, (test_y, test_scores, test_names) = _fit_full(
        config, programs, data, subset, variables, seed, log_prefix)
  class_names = list(data.class_names)
  metric_name = reported_metric(config.task)
  val = None
  if result.best_payload is not None:
    val = summary(*result.best_payload, class_names)
  predictions = None
  if config.save_predictions:
    predictions = {'labels': test_y, 'scores': test_scores, 'class_names': class_names,
                   'file_names': np.asarray(test_names, dtype=str)}
    if result.best_payload is not None:
      predictions['val_labels'], predictions['val_scores'] = result.best_payload
  calibration_fields = calibration_record.record_fields(
      result.best_payload, test_y, test_scores, class_names,
      target_sensitivity=config.get('target_sensitivity', 0.9), n_boot=config.n_boot,
      temperature=config.get('calibration', {}).get('temperature', False))
  localisation = {}
  if config.get('localise') is not None:  # configs/eval/nih_localise.py
    localisation, examples = explain.localisation_fields(config, data, programs.model, best)
    if predictions is not None:
      predictions.update(examples)
  return harness.Outcome(
      result=result, best_variables=best, test=summary(test_y, test_scores, class_names),
      val=val, metric_name=metric_name, selection_metric=metric_name,
      ci95=_bootstrap_ci(test_y, test_scores, metric_name, config.n_boot),
      predictions=predictions,
      extra={'feature_cache': bool(use_cache), 'label_policy': data.label_record(),
             'synthetic_data': bool(data.synthetic),
             **calibration_fields, **localisation})


# --- saved classifiers --------------------------------------------------------------


def model_meta(config, programs, encoder, data, meta: dict) -> dict:
  """What Grad-CAM needs to rebuild a saved classifier."""
  del programs
  return dict(meta, kind=MODEL_KIND, task=config.task, class_names=list(data.class_names),
              model_config=checkpoint.config_to_json(encoder.model_config))


def restore_classifier(directory: str):
  """(Classifier, variables) of a directory written by the harness for this task."""
  variables, meta, _ = checkpoint.restore_model(directory)
  if meta.get('kind') != MODEL_KIND:
    raise checkpoint.CheckpointError(f'{directory} is not a classifier saved by '
                                     'mlvicx_jax.evaluate (meta kind missing)')
  cfg = checkpoint.model_config_from_json(meta['model_config'])
  keep = meta.get('context_blocks', 'drop') == 'keep'
  model = classifier_lib.Classifier(models.build_backbone(cfg, keep), len(meta['class_names']))
  expected = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))
  checkpoint.check_tree(expected, variables, f'classifier {directory}')
  return model, jax.tree.map(jnp.asarray, variables)
