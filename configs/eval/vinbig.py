r"""Classification on VinBig-CXR (VinDr-CXR, 14 findings, mean AUC; paper Table II).

  python -m mlvicx_jax.evaluate --config=configs/eval/vinbig.py \
      --config.checkpoint=DIR --config.data_dir=TFDS_DIR --workdir=OUT
  --config=configs/eval/vinbig.py:paper   the paper's values (batch 16, lr 1e-3)
  --config=configs/eval/vinbig.py:smoke   tiny random-init model, 1 run, 2 epochs

Image-level labels come from the prepared build (any reader, or a majority,
marked the finding: `prepare --vinbig_label_rule`); the test split is a
seeded hold-out of Kaggle's train set (its test set has no labels).
"""
from configs.eval import common


def get_config(arg: str = ''):
  variant = arg or 'official'
  c = common.classification('vinbig')
  if variant == 'paper':
    c.batch_size = 16
    c.optim.lr_frozen = 1e-3
    c.optim.lr_finetune = 1e-3
  elif variant == 'smoke':
    common.smoke(c)
  elif variant != 'official':
    raise ValueError(f"configs/eval/vinbig.py: unknown variant {variant!r}; use '', 'paper' or 'smoke'")
  return c
