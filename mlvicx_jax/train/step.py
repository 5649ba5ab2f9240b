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
                    make_views: Callable | None = None,
                    inject_nan_at_step: int = -1) -> Callable:
  """Returns step(state, batch) -> (state, metrics). The batch axis may be sharded:
  under jit, BN and loss statistics are then those of the global batch.

  `objective` is the method's loss and state updates (methods.build). The
  batch is {'view1', 'view2'}, or with
  `make_views` (device augmentation) {'image', 'position'}, from which
  make_views(image, position) makes them. inject_nan_at_step >= 0 poisons
  that step's view1 (tests the NaN guard).
  """
  def train_step(state: TrainState, batch):
    if make_views is not None:
      view1, view2 = make_views(batch['image'], batch['position'])
      batch = {'view1': view1, 'view2': view2}
    if inject_nan_at_step >= 0:
      poison = jnp.where(state.step == inject_nan_at_step, jnp.nan, 1.0)
      batch = dict(batch, view1=batch['view1'] * poison.astype(batch['view1'].dtype))
    grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
    (loss, (metrics, batch_stats, extra)), grads = grad_fn(
        state.params, state.batch_stats, state.extra, batch['view1'], batch['view2'],
        state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    extra = objective.after(extra, params, state.step)
    new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                           opt_state=opt_state, extra=extra)
    # A non-finite loss must never reach a checkpoint: keep the old state, and
    # let the host loop stop with the metrics that name the offending term.
    finite = jnp.isfinite(loss)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    metrics = dict(metrics, lr=schedule(state.step), grad_norm=optax.global_norm(grads))
    return new_state, metrics

  return train_step
