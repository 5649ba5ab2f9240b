r"""SimCLR (Chen, Kornblith, Norouzi and Hinton, ICML 2020) on NIH ChestX-ray14, ResNet18.

  python -m mlvicx_jax.main --config=configs/pretrain/simclr.py[:smoke] --workdir=DIR

Sources (SimCLR paper, Sec. 2.1-2.2 and App. B.1):
  projection g(h) = W2 ReLU(W1 h): hidden width = the encoder's output (2048
  for ResNet-50, 512 here), output 128, no BN (Sec. 2.1, App. B.4)
  NT-Xent, temperature 0.1 (the best value with LARS at batch 4096, B.9),
  negatives from the whole global batch (2N - 2 per anchor)
  LARS, lr 0.3 x batch/256, weight decay 1e-6, biases and BN excluded from
  LARS and decay; 10 warmup epochs, then cosine decay to 0; batch 4096 (B.1)
"""
from configs.pretrain import common


def get_config(arg: str = ''):
  c = common.base('simclr', arg, file='configs/pretrain/simclr.py')
  c.model.global_head = (512, 128)
  c.model.head_hidden_norm = False
  c.model.head_output_norm = 'none'
  common.plain_loss(c)
  c.loss.temperature = 0.1
  c.global_batch_size = 4096
  c.optim.optimizer = 'lars'
  c.optim.base_lr = 0.3
  c.optim.weight_decay = 1e-6
  c.optim.warmup_epochs = 10.0
  c.optim.end_factor = 0.0
  return common.smoke(c) if arg == 'smoke' else c
