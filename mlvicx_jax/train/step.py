"""The pretraining state and the jit-compiled train step (pure functions)."""
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from mlvicx_jax.train import methods


@flax.struct.dataclass
class TrainState:
  """`extra` holds what the method keeps besides gradients' parameters (momentum
  target network, key queue); empty for MLVICX, VICReg, Barlow Twins, SimCLR, SimSiam."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  extra: Any = flax.struct.field(default_factory=dict)


def make_train_step(model, tx: optax.GradientTransformation,
                    schedule: Callable[[jax.Array], jax.Array], objective: methods.Objective,
                    make_views: Callable | None = None, poison: bool = False) -> Callable:
  """Returns step(state, batch, lr_scale=None) -> (state, metrics). The batch axis may be
  sharded: under jit, BN and loss statistics are then those of the global batch.

  `objective` is the method's loss and state updates (methods.build). The
  batch is {'view1', 'view2'}, or with
  `make_views` (device augmentation) {'image', 'position'}, from which
  make_views(image, position) makes them. With `poison` the batch also holds
  'poison', per-example factors of view1 (NaN injection, train/nonfinite.py).
  `lr_scale` multiplies the update: the learning rate, for LARS, SGD and AdamW,
  which all apply it last (a rollback's reduced rate).
  """
  def train_step(state: TrainState, batch, lr_scale=None):
    if make_views is not None:
      view1, view2 = make_views(batch['image'], batch['position'])
      batch = {'view1': view1, 'view2': view2}
    if poison:
      factor = batch['poison'].astype(batch['view1'].dtype)
      batch = dict(batch, view1=batch['view1'] * factor[:, None, None, None])
    grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
    (loss, (metrics, batch_stats, extra)), grads = grad_fn(
        state.params, state.batch_stats, state.extra, batch['view1'], batch['view2'],
        state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if lr_scale is not None:
      updates = jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)
    params = optax.apply_updates(state.params, updates)
    extra = objective.after(extra, params, state.step)
    new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                           opt_state=opt_state, extra=extra)
    # A non-finite loss must never reach a checkpoint: keep the old state, and
    # let the host loop stop with the metrics that name the offending term.
    finite = jnp.isfinite(loss)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    lr = schedule(state.step) * (1.0 if lr_scale is None else lr_scale)
    metrics = dict(metrics, lr=lr, grad_norm=optax.global_norm(grads))
    return new_state, metrics

  return train_step
