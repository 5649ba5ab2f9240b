"""LARS in VICReg's order, as an optax transformation.

Per parameter p with gradient g (VICReg, facebookresearch/vicreg):

  g  = g + weight_decay * p                       (where decay applies)
  q  = eta * |p| / |g|, or 1 if |p| or |g| is 0   (where trust ratio applies)
  mu = momentum * mu + q * g
  update = -lr * mu

The learning rate multiplies the momentum buffer, not the gradient entering
it. `optax.lars` puts the learning rate inside the buffer instead, which
gives different updates as soon as the learning rate changes between steps
(warmup, cosine decay), so it is not used here.
"""

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

Mask = Union[Any, Callable[[Any], Any]]


class LarsState(NamedTuple):
  """`count` is the number of updates done so far (the schedule's step)."""
  count: jax.Array
  momentum: Any


def exclude_bias_and_norm(params: Any) -> Any:
  """True for parameters that get decay / trust ratio: all with ndim != 1.

  One-dimensional parameters are biases and normalisation scales/offsets,
  which VICReg's LARS leaves out of both.
  """
  return jax.tree_util.tree_map(lambda p: jnp.ndim(p) != 1, params)


def _resolve_mask(mask: Mask, params: Any, name: str) -> Any:
  mask = exclude_bias_and_norm if mask is None else mask
  tree = mask(params) if callable(mask) else mask
  params_structure = jax.tree_util.tree_structure(params)
  if jax.tree_util.tree_structure(tree) != params_structure:
    raise ValueError(
        f'lars: {name} must have the same tree structure as the params, got '
        f'{jax.tree_util.tree_structure(tree)} for params '
        f'{params_structure}.')
  return tree


def _check_non_negative(value: Any, name: str) -> None:
  if isinstance(value, (int, float)) and value < 0:
    raise ValueError(f'lars: {name} must be >= 0, got {value}.')


def lars(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    eta: float = 0.001,
    weight_decay: float = 1e-6,
    weight_decay_mask: Mask = None,
    trust_ratio_mask: Mask = None,
) -> optax.GradientTransformation:
  """LARS with VICReg's update order (see module docstring).

  Args:
    learning_rate: a float, or an optax schedule called with the number of
      updates already applied (0 at the first update).
    momentum: momentum coefficient.
    eta: trust coefficient.
    weight_decay: coupled L2 decay added to the gradient.
    weight_decay_mask: pytree of Python bools (static, not traced) with the
      params' structure, or a callable params -> such a pytree; True where
      decay applies. None means every param except those with ndim == 1.
    trust_ratio_mask: same form, True where the trust ratio applies; same
      default.

  Returns:
    An optax.GradientTransformation; its `update` needs `params`.
  """
  _check_non_negative(learning_rate, 'learning_rate')
  _check_non_negative(momentum, 'momentum')
  _check_non_negative(eta, 'eta')
  _check_non_negative(weight_decay, 'weight_decay')

  def init_fn(params):
    return LarsState(
        count=jnp.zeros([], jnp.int32),
        momentum=jax.tree_util.tree_map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('lars: update needs params (weight decay and trust '
                       'ratio depend on them).')
    decay_mask = _resolve_mask(weight_decay_mask, params, 'weight_decay_mask')
    ratio_mask = _resolve_mask(trust_ratio_mask, params, 'trust_ratio_mask')
    lr = learning_rate(state.count) if callable(learning_rate) else (
        learning_rate)

    def new_momentum(g, p, mu, decays, adapts):
      if decays:
        g = g + weight_decay * p
      if adapts:
        param_norm = jnp.linalg.norm(p.astype(jnp.float32).ravel())
        grad_norm = jnp.linalg.norm(g.astype(jnp.float32).ravel())
        both_positive = (param_norm > 0) & (grad_norm > 0)
        safe_grad_norm = jnp.where(grad_norm > 0, grad_norm, 1.0)
        trust_ratio = jnp.where(both_positive,
                                eta * param_norm / safe_grad_norm, 1.0)
        g = g * trust_ratio.astype(g.dtype)
      return momentum * mu + g

    mu = jax.tree_util.tree_map(new_momentum, updates, params, state.momentum,
                                decay_mask, ratio_mask)
    new_updates = jax.tree_util.tree_map(
        lambda m: (-lr * m).astype(m.dtype), mu)
    new_state = LarsState(count=optax.safe_increment(state.count),
                          momentum=mu)
    return new_updates, new_state

  return optax.GradientTransformation(init_fn, update_fn)
