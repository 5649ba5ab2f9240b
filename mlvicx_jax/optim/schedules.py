"""Learning-rate rules: VICReg / MLVICX pretraining, and the downstream warm restarts."""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# The reference batch size of the linear scaling rule (VICReg, MLVICX).
REFERENCE_BATCH_SIZE = 256

COSINE_OVER_CHOICES = ('total', 'after_warmup')


def scaled_lr(base_lr: float, batch_size: int) -> float:
  """Linear scaling rule: base_lr * batch_size / 256."""
  if base_lr < 0:
    raise ValueError(f'scaled_lr: base_lr must be >= 0, got {base_lr}.')
  if batch_size <= 0:
    raise ValueError(f'scaled_lr: batch_size must be > 0, got {batch_size}.')
  return base_lr * batch_size / REFERENCE_BATCH_SIZE


def warmup_cosine_schedule(
    peak_lr: float,
    warmup_steps: int,
    total_steps: int,
    end_factor: float = 0.001,
    cosine_over: str = 'total',
) -> Callable[[jax.Array], jax.Array]:
  """Linear warmup from 0, then cosine from peak_lr to end_factor * peak_lr.

  For step < warmup_steps: lr = peak_lr * step / warmup_steps. After that,
  with q = 0.5 * (1 + cos(pi * t)): lr = peak_lr * q + end * (1 - q), where

    cosine_over='total' (official MLVICX code):
      t = (step - warmup_steps) / total_steps, so the end value is never
      quite reached within total_steps;
    cosine_over='after_warmup' (VICReg):
      t = (step - warmup_steps) / (total_steps - warmup_steps).

  t is capped at 1, so steps past the end stay at end_factor * peak_lr
  instead of climbing back up the cosine.

  Returns:
    A jax-traceable function step -> learning rate (float32), usable as an
    optax schedule.
  """
  if peak_lr < 0:
    raise ValueError(
        f'warmup_cosine_schedule: peak_lr must be >= 0, got {peak_lr}.')
  if warmup_steps < 0:
    raise ValueError(f'warmup_cosine_schedule: warmup_steps must be >= 0, '
                     f'got {warmup_steps}.')
  if total_steps <= 0:
    raise ValueError(f'warmup_cosine_schedule: total_steps must be > 0, got '
                     f'{total_steps}.')
  if warmup_steps > total_steps:
    raise ValueError(
        f'warmup_cosine_schedule: warmup_steps ({warmup_steps}) exceeds '
        f'total_steps ({total_steps}).')
  if end_factor < 0:
    raise ValueError(f'warmup_cosine_schedule: end_factor must be >= 0, got '
                     f'{end_factor}.')
  if cosine_over not in COSINE_OVER_CHOICES:
    raise ValueError(
        f'warmup_cosine_schedule: cosine_over must be one of '
        f'{COSINE_OVER_CHOICES}, got {cosine_over!r}.')
  if cosine_over == 'after_warmup' and warmup_steps == total_steps:
    raise ValueError(
        "warmup_cosine_schedule: cosine_over='after_warmup' needs "
        f'total_steps ({total_steps}) > warmup_steps ({warmup_steps}).')

  cosine_steps = total_steps if cosine_over == 'total' else (
      total_steps - warmup_steps)
  end_lr = end_factor * peak_lr

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup_lr = peak_lr * step / max(warmup_steps, 1)
    t = jnp.clip((step - warmup_steps) / cosine_steps, 0.0, 1.0)
    q = 0.5 * (1.0 + jnp.cos(math.pi * t))
    cosine_lr = peak_lr * q + end_lr * (1.0 - q)
    return jnp.where(step < warmup_steps, warmup_lr, cosine_lr)

  return schedule


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
