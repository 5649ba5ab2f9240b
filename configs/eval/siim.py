r"""SIIM-ACR pneumothorax segmentation: U-Net on the pretrained encoder (Dice; paper Table III).

  python -m mlvicx_jax.evaluate --config=configs/eval/siim.py \
      --config.checkpoint=DIR --config.data_dir=TFDS_DIR --workdir=OUT \
      [--config.protocol=frozen|finetune]
  --config=configs/eval/siim.py:smoke   tiny random-init model, 1 run, 2 epochs

Paper: label fractions 30% and 100%, batch 32, lr 3e-4 (Adam), decoder
randomly initialised, Dice on the validation split. Records hold global Dice
(beside the paper's column), Dice over positive images and per-image Dice,
each with its empty-prediction floor (mlvicx_jax/evaluate/segmentation.py).
"""
from configs.eval import common


def get_config(arg: str = ''):
  variant = arg or 'official'
  c = common.segmentation()
  if variant == 'smoke':
    common.smoke(c)
  elif variant not in ('official', 'paper'):
    raise ValueError(f"configs/eval/siim.py: unknown variant {variant!r}; use '', 'paper' or 'smoke'")
  return c
