"""Momentum (EMA) target networks: BYOL's and MoCo's slow copies of the online weights."""
from typing import Any

import jax
import jax.numpy as jnp

MOMENTUM_SCHEDULES = ('constant', 'cosine')


def target_momentum(step: jax.Array, base: float, total_steps: int,
                    schedule: str = 'constant') -> jax.Array:
  """The EMA coefficient at `step` (0-based).

  'constant' is MoCo's m (0.999). 'cosine' is BYOL's
  tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, which rises from
  tau_base at k = 0 to 1 at k = K.
  """
  if schedule == 'constant':
    return jnp.asarray(base, jnp.float32)
  if schedule != 'cosine':
    raise ValueError(f'momentum schedule must be one of {MOMENTUM_SCHEDULES}, got {schedule!r}')
  progress = jnp.asarray(step, jnp.float32) / max(total_steps, 1)
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def ema_update(target: Any, online: Any, momentum: jax.Array) -> Any:
  """target <- momentum * target + (1 - momentum) * online, leaf by leaf, without gradient."""
  return jax.tree.map(
      lambda t, o: (momentum * t + (1.0 - momentum) * jax.lax.stop_gradient(o)).astype(t.dtype),
      target, online)
