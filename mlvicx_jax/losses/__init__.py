"""Self-supervised losses: VICReg, the MLVICX sum, and comparison methods."""

from mlvicx_jax.losses.barlow_twins import barlow_twins_loss
from mlvicx_jax.losses.contrastive import l2_normalize
from mlvicx_jax.losses.contrastive import moco_loss
from mlvicx_jax.losses.contrastive import simclr_loss
from mlvicx_jax.losses.cosine import byol_loss
from mlvicx_jax.losses.cosine import simsiam_loss
from mlvicx_jax.losses.vicreg import mlvicx_loss
from mlvicx_jax.losses.vicreg import vicreg_loss

__all__ = [
    'barlow_twins_loss',
    'byol_loss',
    'l2_normalize',
    'mlvicx_loss',
    'moco_loss',
    'simclr_loss',
    'simsiam_loss',
    'vicreg_loss',
]
