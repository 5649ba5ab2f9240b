"""The pretraining state and the jit-compiled MLVICX train step (pure functions)."""
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from mlvicx_jax import losses


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def forward_two_views(model, params, batch_stats, view1, view2):
  """Two separate passes (BN statistics per view); running stats chained view1 -> view2
  as the official code's two sequential forward calls do."""
  out1, new = model.apply({'params': params, 'batch_stats': batch_stats}, view1,
                          train=True, mutable=['batch_stats'])
  out2, new = model.apply({'params': params, 'batch_stats': new['batch_stats']}, view2,
                          train=True, mutable=['batch_stats'])
  return out1, out2, new['batch_stats']


def make_train_step(model, tx: optax.GradientTransformation,
                    schedule: Callable[[jax.Array], jax.Array], loss_cfg,
                    make_views: Callable | None = None,
                    inject_nan_at_step: int = -1) -> Callable:
  """Returns step(state, batch) -> (state, metrics). The batch axis may be sharded:
  under jit, BN and VICReg statistics are then those of the global batch.

  The batch is {'view1', 'view2'}, or with `make_views` (device augmentation)
  {'image', 'position'}, from which make_views(image, position) makes them.
  inject_nan_at_step >= 0 poisons that step's view1 (tests the NaN guard).
  """

  def loss_fn(params, batch_stats, batch):
    out1, out2, batch_stats = forward_two_views(
        model, params, batch_stats, batch['view1'], batch['view2'])
    loss, metrics = losses.mlvicx_loss(
        out1.get('z'), out2.get('z'), out1.get('m'), out2.get('m'),
        lam=loss_cfg.lam, use_global=loss_cfg.use_global, use_local=loss_cfg.use_local,
        sim_coeff=loss_cfg.sim_coeff, std_coeff=loss_cfg.std_coeff,
        cov_coeff=loss_cfg.cov_coeff, eps=loss_cfg.eps)
    return loss, (metrics, batch_stats)

  def train_step(state: TrainState, batch):
    if make_views is not None:
      view1, view2 = make_views(batch['image'], batch['position'])
      batch = {'view1': view1, 'view2': view2}
    if inject_nan_at_step >= 0:
      poison = jnp.where(state.step == inject_nan_at_step, jnp.nan, 1.0)
      batch = dict(batch, view1=batch['view1'] * poison.astype(batch['view1'].dtype))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(step=state.step + 1, params=params,
                           batch_stats=batch_stats, opt_state=opt_state)
    # A non-finite loss must never reach a checkpoint: keep the old state, and
    # let the host loop stop with the metrics that name the offending term.
    finite = jnp.isfinite(loss)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    metrics = dict(metrics, lr=schedule(state.step), grad_norm=optax.global_norm(grads))
    return new_state, metrics

  return train_step
