r"""Ablation: MLVICX without its context-bottleneck (CBAM) blocks, a plain ResNet18 trunk.

  python -m mlvicx_jax.main --config=configs/pretrain/mlvicx_no_context.py[:smoke] --workdir=DIR

Both losses and every other value as in configs/nih.py.
"""
from configs import nih


def get_config(arg: str = ''):
  c = nih.get_config(arg)
  c.model.context_blocks = False
  return c
