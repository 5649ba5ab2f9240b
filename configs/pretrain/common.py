"""Values shared by configs/pretrain/*.py: MLVICX's data, schedule and checkpoints.

Every method is pretrained by the same program on the same NIH stream with
the same augmentation (VICReg's asymmetric recipe, which is also BYOL's) and
the same epoch budget as MLVICX (300), so a table row differs from MLVICX's
only in what the method itself prescribes: heads, loss, optimiser, learning
rate and batch. Each method's file lists the source of each of those values.
"""
from configs import nih


def base(method: str, variant: str, *, file: str):
  """configs/nih.py's official values (or its smoke run) with `method` set."""
  variant = variant or 'official'
  if variant not in ('official', 'smoke'):
    raise ValueError(f"{file}: unknown variant {variant!r}; use '' or 'smoke'")
  c = nih.get_config('smoke' if variant == 'smoke' else '')
  c.method = method
  c.model.context_blocks = False  # the comparison methods use a plain ResNet18
  c.model.multilevel = False
  c.optim.cosine_over = 'after_warmup'  # warmup, then cosine over the remaining steps
  return c


def plain_loss(c):
  """Replaces VICReg's constants, which only MLVICX and VICReg read."""
  for field in ('sim_coeff', 'std_coeff', 'cov_coeff', 'eps', 'lam', 'use_global', 'use_local'):
    del c.loss[field]


def smoke(c, head_width: int = 64, out_width: int = 32):
  """The smoke run's heads: narrow versions of the method's own, same layout."""
  c.model.global_head = tuple([head_width] * (len(c.model.global_head) - 1) + [out_width])
  if c.model.predictor:
    c.model.predictor = tuple([head_width] * (len(c.model.predictor) - 1) + [out_width])
  c.global_batch_size = 16
  c.optim.warmup_epochs = min(c.optim.warmup_epochs, 0.5)
  return c
