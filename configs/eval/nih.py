r"""Classification on NIH ChestX-ray14 (14 labels, mean AUC; paper Tables I, II).

  python -m mlvicx_jax.evaluate --config=configs/eval/nih.py \
      --config.checkpoint=DIR --config.data_dir=TFDS_DIR --workdir=OUT
  --config=configs/eval/nih.py:paper   the paper's values (batch 64, fine-tune lr 1e-5)
  --config=configs/eval/nih.py:smoke   tiny random-init model, 1 run, 2 epochs

Defaults are the official downstream script (ln_cls.py): AdamW, lr 3e-3
frozen / 3e-4 fine-tune, cosine warm restarts (T_0 10, T_mult 2), clip 1.0,
batch 128, early stopping patience 10 on validation mean AUC. Unlike the
official script, validation is a patient-wise hold-out of train_val (never
the test list) and the frozen probe keeps BN in inference mode.
"""
from mlvicx_jax.evaluate import classify


def get_config(arg: str = ''):
  variant = arg or 'official'
  c = classify.base_config('nih')
  if variant == 'paper':
    c.batch_size = 64
    c.optim.lr_finetune = 1e-5   # the paper gives no frozen lr: the official 3e-3 stays
  elif variant == 'smoke':
    classify.smoke_overrides(c)
  elif variant != 'official':
    raise ValueError(f"configs/eval/nih.py: unknown variant {variant!r}; use '', 'paper' or 'smoke'")
  return c
