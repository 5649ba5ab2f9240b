r"""BYOL (Grill et al., NeurIPS 2020) on NIH ChestX-ray14, ResNet18.

  python -m mlvicx_jax.main --config=configs/pretrain/byol.py[:smoke] --workdir=DIR

Sources (BYOL paper, Sec. 3.3 and App. C):
  projector Linear 4096 + BN + ReLU + Linear 256; predictor the same MLP on
  the projection (Sec. 3.3)
  target momentum tau_base 0.996, raised to 1 with a cosine over training (Sec. 3.3)
  loss 2 - 2 cos(prediction, target projection), summed over both directions (Sec. 3.1)
  LARS, lr 0.2 x batch/256, weight decay 1.5e-6, biases and BN excluded from
  LARS and decay; 10 warmup epochs, then cosine decay to 0; batch 4096 (Sec. 3.3)
"""
from configs.pretrain import common


def get_config(arg: str = ''):
  c = common.base('byol', arg, file='configs/pretrain/byol.py')
  c.model.global_head = (4096, 256)
  c.model.head_output_norm = 'none'
  c.model.predictor = (4096, 256)
  c.model.predictor_output_norm = 'none'
  common.plain_loss(c)
  c.loss.momentum = 0.996
  c.loss.momentum_schedule = 'cosine'
  c.global_batch_size = 4096
  c.optim.optimizer = 'lars'
  c.optim.base_lr = 0.2
  c.optim.weight_decay = 1.5e-6
  c.optim.warmup_epochs = 10.0
  c.optim.end_factor = 0.0
  return common.smoke(c) if arg == 'smoke' else c
