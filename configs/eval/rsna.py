r"""Classification on RSNA Pneumonia (binary; accuracy and AUC; paper Table II).

  python -m mlvicx_jax.evaluate --config=configs/eval/rsna.py \
      --config.checkpoint=DIR --config.data_dir=TFDS_DIR --workdir=OUT
  --config=configs/eval/rsna.py:paper   the paper's values (batch 16, lr 1e-3)
  --config=configs/eval/rsna.py:smoke   tiny random-init model, 1 run, 2 epochs

The reported metric is test accuracy at probability 0.5 (the paper's), and
early stopping selects on validation accuracy; the AUC is recorded too.
"""
from configs.eval import common


def get_config(arg: str = ''):
  variant = arg or 'official'
  c = common.classification('rsna')
  if variant == 'paper':
    c.batch_size = 16
    c.optim.lr_frozen = 1e-3
    c.optim.lr_finetune = 1e-3
  elif variant == 'smoke':
    common.smoke(c)
  elif variant != 'official':
    raise ValueError(f"configs/eval/rsna.py: unknown variant {variant!r}; use '', 'paper' or 'smoke'")
  return c
