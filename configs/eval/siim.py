r"""SIIM-ACR pneumothorax segmentation: U-Net on the pretrained ResNet18 (Dice; paper Table III).

  python -m mlvicx_jax.segment --config=configs/eval/siim.py \
      --config.checkpoint=DIR --config.data_dir=TFDS_DIR --workdir=OUT \
      [--config.protocol=frozen|finetune]
  --config=configs/eval/siim.py:smoke   tiny random-init model, 1 run, 2 epochs

SPEC section 4 / paper: label fractions 30% and 100%, batch 32, lr 3e-4
(Adam), decoder randomly initialised, Dice on the validation split (the
record also holds the test split's Dice). Loss: BCE + soft Dice.
"""
from mlvicx_jax.evaluate import segmentation


def get_config(arg: str = ''):
  variant = arg or 'official'
  c = segmentation.base_config()
  if variant == 'smoke':
    segmentation.smoke_overrides(c)
  elif variant not in ('official', 'paper'):
    raise ValueError(f"configs/eval/siim.py: unknown variant {variant!r}; use '', 'paper' or 'smoke'")
  return c
