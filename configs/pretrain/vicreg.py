r"""VICReg (Bardes, Ponce and LeCun, ICLR 2022) on NIH ChestX-ray14, ResNet18.

  python -m mlvicx_jax.main --config=configs/pretrain/vicreg.py[:smoke] --workdir=DIR

Sources (VICReg paper, Sec. 4.1 and App. C; facebookresearch/vicreg):
  expander 8192-8192-8192, Linear+BN+ReLU, last Linear without bias or BN (Sec. 4.1)
  lambda = mu = 25, nu = 1, eps 1e-4 (Sec. 4.1)
  LARS, base lr 0.2 x batch/256, weight decay 1e-6, eta 0.001, biases and
  BN excluded; 10 warmup epochs, then cosine to 0.001 x peak; batch 2048 (App. C)
The loss is MLVICX's global term alone: no context blocks, no multi-level branch.
"""
from configs.pretrain import common


def get_config(arg: str = ''):
  c = common.base('vicreg', arg, file='configs/pretrain/vicreg.py')
  c.model.global_head = (8192, 8192, 8192)
  c.model.head_output_norm = 'none'
  c.model.head_output_bias = False
  c.loss.use_local = False
  c.global_batch_size = 2048
  c.optim.optimizer = 'lars'
  c.optim.base_lr = 0.2
  c.optim.weight_decay = 1e-6
  c.optim.warmup_epochs = 10.0
  c.optim.end_factor = 0.001
  return common.smoke(c) if arg == 'smoke' else c
