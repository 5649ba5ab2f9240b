r"""MoCo v2 (Chen, Fan, Girshick and He, arXiv 2003.04297) on NIH ChestX-ray14, ResNet18.

  python -m mlvicx_jax.main --config=configs/pretrain/moco_v2.py[:smoke] --workdir=DIR

Sources (MoCo v1 paper, He et al. CVPR 2020, Sec. 3.3 and 4; MoCo v2 note, Sec. 2):
  MLP head: Linear (hidden = the encoder's output, 2048 for ResNet-50, 512
  here) + ReLU + Linear 128, no BN (v2)
  temperature 0.2 (v2), queue of 65,536 keys (v1), key encoder momentum
  0.999, constant (v1)
  SGD, momentum 0.9, weight decay 1e-4 on all parameters, lr 0.03 for
  batch 256 (x batch/256 when the batch changes), cosine decay, no warmup (v2)
Queries come from view1 and keys from view2, one direction, as in the paper.
BatchNorm is global over the batch instead of shuffle-BN (mlvicx_jax/train/methods.py says why).
"""
from configs.pretrain import common


def get_config(arg: str = ''):
  c = common.base('moco_v2', arg, file='configs/pretrain/moco_v2.py')
  c.model.global_head = (512, 128)
  c.model.head_hidden_norm = False
  c.model.head_output_norm = 'none'
  common.plain_loss(c)
  c.loss.temperature = 0.2
  c.loss.queue_size = 65536
  c.loss.momentum = 0.999
  c.loss.momentum_schedule = 'constant'
  c.global_batch_size = 256
  c.optim.optimizer = 'sgd'
  c.optim.base_lr = 0.03
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.warmup_epochs = 0.0
  c.optim.end_factor = 0.0
  if arg == 'smoke':
    common.smoke(c)
    c.loss.queue_size = 64  # four smoke batches of keys
  return c
