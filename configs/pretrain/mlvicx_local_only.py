r"""Ablation L_L (paper Table IV): MLVICX trained by the multi-level loss alone.

  python -m mlvicx_jax.main --config=configs/pretrain/mlvicx_local_only.py[:smoke] --workdir=DIR

The global head is dropped (it would receive no gradient); everything else is configs/nih.py.
"""
from configs import nih


def get_config(arg: str = ''):
  c = nih.get_config(arg)
  c.model.global_head = ()
  c.loss.use_global = False
  return c
