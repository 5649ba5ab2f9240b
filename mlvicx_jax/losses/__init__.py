"""Self-supervised losses: VICReg and the MLVICX global + multi-level sum."""

from mlvicx_jax.losses.vicreg import mlvicx_loss
from mlvicx_jax.losses.vicreg import vicreg_loss

__all__ = ['mlvicx_loss', 'vicreg_loss']
