"""The downstream harness: one loop for every task and protocol.

`run(config, workdir)` checks the config, loads the encoder and the prepared
data, builds the task's programs once (so every run compiles once), then
trains and tests each (label fraction, seed) run and writes its record.
Runs whose record exists are loaded instead (skip-existing). A task module
(`classification`, `segmentation`) supplies the model, loss, metrics and
the record fields of its runs; everything they share lives here:

  protocols  frozen: only the head (linear layer, U-Net decoder) trains;
             the encoder's parameters and BatchNorm statistics are constants
             handed to the step, its BN in inference mode. finetune:
             everything trains.
  optimiser  the official `ln_cls.py`: AdamW with an injected per-epoch lr
             (cosine annealing with warm restarts, or constant), gradient
             norm clipping.
  selection  early stopping on the task's reported validation metric,
             testing the parameters of the best epoch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlvicx_jax import checkpoint
from mlvicx_jax import optim
from mlvicx_jax import vocabulary
from mlvicx_jax.evaluate import data as data_lib
from mlvicx_jax.evaluate import early_stopping
from mlvicx_jax.evaluate import encoder as encoder_lib
from mlvicx_jax.evaluate import record_files
from mlvicx_jax.evaluate import records

PROTOCOLS = vocabulary.PROTOCOLS


def check_config(config, tasks: Sequence[str]) -> None:
  """Rejects bad shared fields before any data is read, naming the field."""
  if config.task not in tasks:
    raise ValueError(f'config.task must be one of {tuple(tasks)}, got {config.task!r}')
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
  if config.label_subset not in data_lib.LABEL_SUBSETS:
    raise ValueError(f'config.label_subset must be one of {data_lib.LABEL_SUBSETS}, '
                     f'got {config.label_subset!r}')
  if config.encoder.context_blocks not in encoder_lib.CONTEXT_BLOCKS:
    raise ValueError(f'config.encoder.context_blocks must be one of '
                     f'{encoder_lib.CONTEXT_BLOCKS}, got {config.encoder.context_blocks!r}')
  for field in ('image_size', 'batch_size', 'eval_batch_size', 'num_epochs', 'patience'):
    if int(config[field]) < 1:
      raise ValueError(f'config.{field} must be >= 1, got {config[field]}')
  for field in ('bn_batches', 'bn_batch_size'):
    if int(config.encoder[field]) < 1:
      raise ValueError(f'config.encoder.{field} must be >= 1, got {config.encoder[field]}')
  if config.augment not in ('official', 'mild'):
    raise ValueError(f"config.augment must be 'official' or 'mild', got {config.augment!r}")
  if config.optim.schedule not in ('cosine_warm_restarts', 'constant'):
    raise ValueError("config.optim.schedule must be 'cosine_warm_restarts' or 'constant', "
                     f'got {config.optim.schedule!r}')


# --- optimiser ----------------------------------------------------------------------


def learning_rates(config) -> np.ndarray:
  """The lr of every epoch of a run."""
  o = config.optim
  base = o.lr_frozen if config.protocol == 'frozen' else o.lr_finetune
  if o.schedule == 'constant':
    return np.full(config.num_epochs, base, np.float64)
  return optim.cosine_warm_restarts(config.num_epochs, base, o.min_lr, o.restart_period,
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


# --- variables ----------------------------------------------------------------------


def split_trainable(variables: dict, protocol: str, head: str) -> tuple[dict, dict]:
  """(trainable params, everything else) for a protocol.

  Frozen: only the params under `head` are trainable; the encoder's params
  and BN statistics go to the step as constants and come back untouched.
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


def make_initializer(model, encoder: encoder_lib.Encoder, trunk_name: str, head_name: str,
                     head_init: Callable, image_size: int) -> Callable[[Any], dict]:
  """rng -> variables of `model`: the encoder's trunk under `trunk_name`, a fresh head.

  With a pretrained trunk only the head is initialised (compiling the whole
  model's init costs far more than running it); a random trunk is
  initialised with everything else. `head_init(rng, shapes)` gets the
  eval_shape of the full init. Built once, compiled once for every seed.
  """
  dummy = jnp.zeros((1, image_size, image_size, 3))
  full_init = jax.jit(lambda r: model.init(r, dummy, train=False))
  if encoder.variables is None:
    return full_init
  shapes = jax.eval_shape(full_init, jax.random.PRNGKey(0))
  jitted_head_init = jax.jit(lambda r: head_init(r, shapes))
  trunk = jax.tree.map(jnp.asarray, encoder.variables)

  def init(rng):
    head = jitted_head_init(rng)
    variables = {'params': {trunk_name: trunk['params'], head_name: head['params']},
                 'batch_stats': {trunk_name: trunk.get('batch_stats', {})}}
    if 'batch_stats' in head:
      variables['batch_stats'][head_name] = head['batch_stats']
    checkpoint.check_tree(shapes, variables, f'{type(model).__name__} on {encoder.source}')
    return variables

  return init


def save_variables(directory: str, variables: dict, meta: dict) -> str:
  """checkpoint.save_model into `directory`, replacing an earlier run's copy."""
  if os.path.exists(directory):
    shutil.rmtree(directory)  # step 0 of an existing manager cannot be overwritten
  with record_files.storage_errors(directory):
    return checkpoint.save_model(directory, jax.device_get(variables), meta)


# --- training with early stopping ---------------------------------------------------


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


def fit_on_stream(config, programs, variables: dict, stream, steps: int, keys: Sequence[str],
                  evaluate: Callable, log_prefix: str) -> tuple[FitResult, dict]:
  """Trains `programs.train_step` on an endless batch stream, `steps` per epoch.

  Returns (FitResult, the best epoch's variables). `evaluate(variables)`
  gives (validation score, payload).
  """
  trainable, fixed = split_trainable(variables, config.protocol, programs.head_name)
  step = programs.train_step

  def train_epoch(state, epoch, lr):
    del epoch
    trainable, fixed, opt_state = state
    opt_state = set_learning_rate(opt_state, lr)
    losses = []
    for batch in data_lib.epoch_batches(stream, steps):
      batch = {k: jnp.asarray(batch[k]) for k in keys}
      trainable, fixed, opt_state, loss = step(trainable, fixed, opt_state, batch)
      losses.append(loss)
    return (trainable, fixed, opt_state), mean_loss(losses)

  result = fit((trainable, fixed, programs.tx.init(trainable)), train_epoch,
               lambda state: evaluate(merge_trainable(state[0], state[1])),
               learning_rates(config), config.patience, log_prefix)
  return result, merge_trainable(result.best_state[0], result.best_state[1])


# --- the grid of runs ----------------------------------------------------------------


def encoder_record(config, encoder: encoder_lib.Encoder, bn_images: Optional[int]) -> dict:
  """The record's `encoder` field: what the downstream network started from."""
  batches = None
  if bn_images is not None:  # batches actually used: a small split fills fewer
    batches = -(-bn_images // int(config.encoder.bn_batch_size))
  return {'context_blocks': encoder.context_blocks,
          'bn_statistics': 're-estimated' if encoder.reestimate_bn else 'checkpoint',
          'bn_batches': batches, 'bn_images': bn_images, 'random_init': encoder.random_init,
          'method': encoder.method}


class TrunkStatistics:
  """Re-estimated BatchNorm statistics of the trunk, computed once per trunk."""

  def __init__(self, config, encoder: encoder_lib.Encoder, data: data_lib.TaskData,
               trunk_name: str):
    self._config, self._encoder, self._data = config, encoder, data
    self._trunk_name = trunk_name
    self._estimator = encoder_lib.make_bn_estimator(encoder.module)
    self._cache = {}

  def key(self, seed: int):
    """Names the trunk: a pretrained one is the same for every seed."""
    return (self._encoder.source, seed if self._encoder.variables is None else None)

  def apply(self, variables: dict, seed: int) -> tuple[dict, Optional[int]]:
    """(variables with the trunk's statistics re-estimated if needed, images used)."""
    if not self._encoder.reestimate_bn:
      return variables, None
    name = self._trunk_name
    key = self.key(seed)
    if key not in self._cache:
      trunk = {'params': variables['params'][name],
               'batch_stats': variables['batch_stats'][name]}
      self._cache[key] = encoder_lib.estimate_batch_stats(
          self._estimator, trunk, data_lib.bn_calibration_images(self._config, self._data))
      logging.info('re-estimated BatchNorm statistics of %s on %d training images',
                   key[0], self._cache[key][1])
    stats, images = self._cache[key]
    return {'params': variables['params'],
            'batch_stats': {**variables['batch_stats'], name: stats}}, images


def existing_record(workdir: str, stem: str, source: str,
                    label_policy: Optional[dict] = None) -> Optional[dict]:
  """The record a previous invocation wrote for this run, if it is whole.

  A damaged record, or one whose predictions or saved model no longer
  restore, is moved aside (`<file>.corrupt-<time>`) with a warning naming it,
  and the run is redone. A record of another checkpoint under the same name
  is an error rather than a silent mix of two models' results; so is one
  read with another uncertainty policy or other classes (`label_policy`).
  """
  path = os.path.join(workdir, stem + '.json')
  if not os.path.exists(path):
    return None
  try:
    record = record_files.load_run_records(path)[0]
    if record.get('predictions'):
      record_files.load_predictions(record)
    if record.get('model'):
      checkpoint.restore_model(record['model'])
  except Exception as e:  # pylint: disable=broad-except  (any damage: redo, never reuse)
    aside = f'{path}.corrupt-{time.strftime("%Y%m%d-%H%M%S")}'
    os.replace(path, aside)
    logging.warning('%s cannot be reused (%s); moved it to %s and redoing that run', path,
                    str(e).splitlines()[0][:300], aside)
    return None
  if record['checkpoint'] != source:
    raise ValueError(f'{path} holds a run of checkpoint {record["checkpoint"]}, not {source}; '
                     'use another --workdir or --config.skip_existing=False to redo it')
  held = record.get('label_policy')
  if label_policy is not None and held is not None and held != label_policy:
    raise ValueError(f'{path} holds a run with labels {held}, not {label_policy}; use another '
                     '--workdir or --config.name')
  logging.info('%s exists; skipping that run', path)
  return record


def run(config, workdir: str, task) -> list[dict]:
  """Every (label fraction, seed) run of `config` with `task`; their validated records.

  Inputs are checked (config, checkpoint architecture, prepared data) before
  anything trains.
  """
  task.check_config(config)
  encoder = encoder_lib.load_encoder(config.checkpoint, config.encoder.context_blocks,
                                     config.encoder.model_variant)
  data = data_lib.open_task_data(config.data_dir, config.task, uncertain=config.get('uncertain'),
                                 classes=config.get('classes'), build=config.get('build', ''))
  if not data.sizes['test']:
    raise ValueError(f'{data.dataset} in {data.data_dir}: the test split is empty')
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f'config_{config.task}_{config.protocol}.json'), 'w') as f:
    json.dump(config.to_dict(), f, indent=2, default=str)
  programs = task.build_programs(config, encoder, data)
  statistics = TrunkStatistics(config, encoder, data, programs.trunk_name)
  out = []
  for fraction in config.label_fractions:
    for seed in config.seeds:
      fraction, seed = float(fraction), int(seed)
      stem = records.record_stem(dict(task=config.task, protocol=config.protocol,
                                      label_fraction=fraction, seed=seed,
                                      name=config.name or None))
      done = (existing_record(workdir, stem, encoder.source, data.label_record())
              if config.skip_existing else None)
      if done is None:
        done = run_one(config, task, programs, encoder, data, statistics, fraction, seed,
                       workdir, stem)
      out.append(done)
  return out


def run_one(config, task, programs, encoder, data, statistics: TrunkStatistics,
            fraction: float, seed: int, workdir: str, stem: str) -> dict:
  """Trains and tests one run; writes its record (and predictions, model)."""
  start = time.time()
  subset = data_lib.train_subset(config, data, fraction, seed)
  variables = programs.init(jax.random.PRNGKey(seed))
  variables, bn_images = statistics.apply(variables, seed)
  outcome = task.fit_and_test(config, programs, data, subset, variables,
                              trunk_key=statistics.key(seed), seed=seed,
                              log_prefix=f'f={fraction:g} seed={seed} ')
  if outcome.result.best_epoch is None:
    logging.warning('the validation %s was never defined; testing the last epoch',
                    outcome.selection_metric)
  model_dir = None
  if config.save_model:
    model_dir = save_variables(
        os.path.join(workdir, task.MODELS_SUBDIR, stem[len(records.RECORD_PREFIX):]),
        outcome.best_variables, task.model_meta(config, programs, encoder, data, dict(
            protocol=config.protocol, label_fraction=fraction, seed=seed,
            image_size=config.image_size, context_blocks=encoder.context_blocks,
            source=encoder.source, best_epoch=outcome.result.best_epoch)))
  record = records.make_record(
      config.task, config.protocol, fraction, seed, encoder.source, outcome.test,
      outcome.metric_name, best_epoch=outcome.result.best_epoch,
      stop_epoch=outcome.result.stop_epoch, ci95=outcome.ci95, val=outcome.val,
      name=config.name or None, encoder=encoder_record(config, encoder, bn_images),
      label_subset=subset.record, selection_metric=outcome.selection_metric,
      model=model_dir, history=outcome.result.history,
      num_examples={'train': subset.size, 'validation': data.sizes['validation'],
                    'test': data.sizes['test']},
      wall_time_s=round(time.time() - start, 2), config=config.to_dict(), **outcome.extra)
  path = record_files.write_run_record(workdir, record, outcome.predictions)
  logging.info('%s: test %s %.4f (best epoch %s) -> %s', stem, outcome.metric_name,
               outcome.test[outcome.metric_name], outcome.result.best_epoch, path)
  return record_files.load_run_records(path)[0]


@dataclasses.dataclass
class Outcome:
  """What a task's fit_and_test gives the harness for the record."""
  result: FitResult
  best_variables: dict
  test: dict
  val: Optional[dict]
  metric_name: str
  selection_metric: str
  ci95: Optional[Sequence[float]]
  predictions: Optional[dict]
  extra: dict = dataclasses.field(default_factory=dict)  # task-specific record fields
