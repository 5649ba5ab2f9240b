"""The embedded demo: synthetic NIH -> MLVICX pretraining -> linear probes.

  python -m mlvicx_jax.main --config=configs/demo.py --workdir=DIR

Needs no downloaded data and fits in about 10 minutes on a 2-core CPU: a
narrow ResNet (same code, fewer channels) pretrains on synthetic chest X-rays
made in DIR, then frozen linear probes of the pretrained and of a
random-initialised encoder are compared on the synthetic test split.
"""
import ml_collections

from configs import nih
from mlvicx_jax.evaluate import classify


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  del arg
  c = nih.get_config('smoke')
  c.synthetic_images = 1200
  c.synthetic_image_size = 128
  c.image_size = 96
  c.global_batch_size = 64
  c.num_train_steps = 300
  c.optim.base_lr = 0.8
  c.optim.warmup_epochs = 1.0
  c.optim.cosine_over = 'after_warmup'
  c.checkpoint_every_steps = 100
  c.log_every_steps = 10
  c.model.stage_sizes = (1, 1, 1, 1)
  c.model.width = 32
  c.model.global_head = (512, 512, 512)
  c.model.multilevel_size = 24
  c.model.multilevel_channels = 64
  c.model.multilevel_head = (512, 512, 512)

  # Linear probes (frozen protocol) run after pretraining, on the same data.
  c.demo = classify.base_config('nih')
  c.demo.protocol = 'frozen'
  c.demo.label_fractions = (1.0,)
  c.demo.seeds = (0,)
  c.demo.image_size = 96
  c.demo.batch_size = 64
  c.demo.eval_batch_size = 128
  c.demo.num_epochs = 60
  c.demo.worker_count = 0
  c.demo.n_boot = 200
  c.demo.save_classifier = False
  return c
