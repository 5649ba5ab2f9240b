r"""Classification on NIH ChestX-ray14 (14 labels, mean AUC; paper Tables I, II).

  python -m mlvicx_jax.evaluate --config=configs/eval/nih.py \
      --config.checkpoint=DIR --config.data_dir=TFDS_DIR --workdir=OUT
  --config=configs/eval/nih.py:paper   the paper's values (batch 64, fine-tune lr 1e-5)
  --config=configs/eval/nih.py:smoke   tiny random-init model, 1 run, 2 epochs

Values: configs/eval/common.py (the official downstream recipe); the
validation split is a patient-wise hold-out of train_val, never the test list.
"""
from configs.eval import common


def get_config(arg: str = ''):
  variant = arg or 'official'
  c = common.classification('nih')
  if variant == 'paper':
    c.batch_size = 64
    c.optim.lr_finetune = 1e-5   # the paper gives no frozen lr: the official 3e-3 stays
  elif variant == 'smoke':
    common.smoke(c)
  elif variant != 'official':
    raise ValueError(f"configs/eval/nih.py: unknown variant {variant!r}; use '', 'paper' or 'smoke'")
  return c
