r"""SimSiam (Chen and He, CVPR 2021) on NIH ChestX-ray14, ResNet18.

  python -m mlvicx_jax.main --config=configs/pretrain/simsiam.py[:smoke] --workdir=DIR

Sources (SimSiam paper, Sec. 4 "Implementation details"):
  projector 2048-2048-2048, Linear+BN+ReLU, the output BN without scale and
  offset (no ReLU); predictor Linear 512 + BN + ReLU + Linear 2048
  loss -cos(p, stop_gradient(z)), averaged over both directions
  SGD, momentum 0.9, weight decay 1e-4, lr 0.05 x batch/256, cosine decay, no
  warmup; batch 512
Not reproduced: the paper keeps the predictor's lr fixed (no decay); here it
follows the same cosine as the rest.
"""
from configs.pretrain import common


def get_config(arg: str = ''):
  c = common.base('simsiam', arg, file='configs/pretrain/simsiam.py')
  c.model.global_head = (2048, 2048, 2048)
  c.model.head_output_norm = 'plain'
  c.model.predictor = (512, 2048)
  c.model.predictor_output_norm = 'none'
  common.plain_loss(c)
  c.global_batch_size = 512
  c.optim.optimizer = 'sgd'
  c.optim.base_lr = 0.05
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.warmup_epochs = 0.0
  c.optim.end_factor = 0.0
  return common.smoke(c) if arg == 'smoke' else c
