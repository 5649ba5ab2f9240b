"""Optimiser pieces: VICReg's LARS and its lr schedule; the downstream warm restarts."""

from mlvicx_jax.optim.lars import exclude_bias_and_norm
from mlvicx_jax.optim.lars import lars
from mlvicx_jax.optim.lars import LarsState
from mlvicx_jax.optim.schedules import COSINE_OVER_CHOICES
from mlvicx_jax.optim.schedules import cosine_warm_restarts
from mlvicx_jax.optim.schedules import scaled_lr
from mlvicx_jax.optim.schedules import warmup_cosine_schedule

__all__ = [
    'COSINE_OVER_CHOICES',
    'LarsState',
    'cosine_warm_restarts',
    'exclude_bias_and_norm',
    'lars',
    'scaled_lr',
    'warmup_cosine_schedule',
]
