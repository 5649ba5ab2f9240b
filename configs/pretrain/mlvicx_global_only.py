r"""Ablation L_G (paper Table IV): MLVICX without the multi-level branch and its loss.

  python -m mlvicx_jax.main --config=configs/pretrain/mlvicx_global_only.py[:smoke] --workdir=DIR

Everything else is configs/nih.py (context blocks kept, the same recipe).
"""
from configs import nih


def get_config(arg: str = ''):
  c = nih.get_config(arg)
  c.model.multilevel = False
  c.loss.use_local = False
  return c
