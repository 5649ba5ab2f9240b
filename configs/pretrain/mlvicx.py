r"""MLVICX itself, beside the comparison methods: configs/nih.py under the common layout.

  python -m mlvicx_jax.main --config=configs/pretrain/mlvicx.py[:paper|:smoke] --workdir=DIR

Identical to `--config=configs/nih.py[:variant]` (SPEC's entry point), which holds the values.
"""
from configs import nih


def get_config(arg: str = ''):
  return nih.get_config(arg)
