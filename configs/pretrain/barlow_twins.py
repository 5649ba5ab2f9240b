r"""Barlow Twins (Zbontar et al., ICML 2021) on NIH ChestX-ray14, ResNet18.

  python -m mlvicx_jax.main --config=configs/pretrain/barlow_twins.py[:smoke] --workdir=DIR

Sources (Barlow Twins paper, Sec. 3 "Implementation details"; facebookresearch/barlowtwins):
  projector 8192-8192-8192, Linear+BN+ReLU, last Linear without bias or BN
  lambda 0.0051 (the released code's default; the paper rounds it to 5e-3)
  LARS, lr 0.2 x batch/256, weight decay 1.5e-6, biases and BN excluded from
  LARS adaptation and decay; 10 warmup epochs, then cosine to 0.001 x peak;
  batch 2048
Not reproduced: the paper's separate lr 0.0048 for biases and BN parameters
(one lr here; override optim.base_lr to change both).
"""
from configs.pretrain import common


def get_config(arg: str = ''):
  c = common.base('barlow_twins', arg, file='configs/pretrain/barlow_twins.py')
  c.model.global_head = (8192, 8192, 8192)
  c.model.head_output_norm = 'none'
  c.model.head_output_bias = False
  common.plain_loss(c)
  c.loss.lambd = 0.0051
  c.global_batch_size = 2048
  c.optim.optimizer = 'lars'
  c.optim.base_lr = 0.2
  c.optim.weight_decay = 1.5e-6
  c.optim.warmup_epochs = 10.0
  c.optim.end_factor = 0.001
  return common.smoke(c) if arg == 'smoke' else c
