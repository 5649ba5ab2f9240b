"""MLVICX pretraining on NIH ChestX-ray14.

  python -m mlvicx_jax.main --config=configs/nih.py --workdir=DIR        # official code's recipe
  python -m mlvicx_jax.main --config=configs/nih.py:paper --workdir=DIR  # paper text's values
  python -m mlvicx_jax.main --config=configs/nih.py:smoke --workdir=DIR  # tiny CPU run on synthetic NIH

Every field can be overridden on the command line: --config.optim.base_lr=0.1
"""
import ml_collections

from mlvicx_jax import models
from mlvicx_jax.data import augment


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  variant = arg or 'official'
  if variant not in ('official', 'paper', 'smoke'):
    raise ValueError(f"configs/nih.py: unknown variant {variant!r}; use '', 'paper' or 'smoke'")
  c = ml_collections.ConfigDict()
  # The objective: 'mlvicx' here; configs/pretrain/*.py hold the comparison
  # methods (vicreg, barlow_twins, simclr, moco_v2, byol, simsiam) and ablations.
  c.method = 'mlvicx'

  # Data: a TFDS directory written by `python -m mlvicx_jax.data.prepare --dataset=nih`.
  # Any prepared build ('folder', 'nih/s256'), or a weighted mixture 'nih:1,chexpert:2'.
  c.dataset = 'nih'
  c.split = 'train+validation'  # pretraining sees every train_val image, never the test list
  c.data_dir = ''              # empty: use synthetic NIH made in the workdir (needs synthetic_images > 0)
  c.synthetic_images = 0       # > 0: make this many synthetic NIH images if data_dir is empty
  c.synthetic_image_size = 256
  c.image_size = 224
  c.global_batch_size = 64     # official README command; summed over all devices and hosts
  c.worker_count = 4           # grain worker processes per host
  c.aug = augment.default_augment_config()

  # Schedule.
  c.num_epochs = 300
  c.num_train_steps = -1       # > 0 overrides num_epochs
  c.seed = 0

  c.model = models.model_config('paper' if variant == 'paper' else 'official')

  c.loss = ml_collections.ConfigDict()
  c.loss.sim_coeff = 25.0      # VICReg alpha (invariance)
  c.loss.std_coeff = 25.0      # beta (variance)
  c.loss.cov_coeff = 1.0       # gamma (covariance)
  c.loss.eps = 1e-4
  c.loss.lam = 1.0             # weight of the multi-level loss L_L
  c.loss.use_global = True     # ablations: L_G only / L_L only (paper Table IV)
  c.loss.use_local = True

  c.optim = ml_collections.ConfigDict()
  c.optim.optimizer = 'lars'   # VICReg's LARS; 'adamw' for short CPU runs (demo)
  c.optim.base_lr = 0.2        # peak lr = base_lr * global_batch_size / 256
  c.optim.momentum = 0.9
  c.optim.eta = 0.001
  c.optim.weight_decay = 1e-6  # paper text: 1e-5
  c.optim.warmup_epochs = 2.0
  c.optim.end_factor = 0.001   # cosine ends at end_factor * peak
  c.optim.cosine_over = 'total'  # official code; 'after_warmup' is VICReg's

  # The official code starts from ImageNet ResNet18 weights; convert a
  # torchvision state dict with mlvicx_jax.tools.import_torch and point here.
  c.init_from = ''

  # Online k-NN monitor (mlvicx_jax/evaluate/monitor.py): every `every_steps`,
  # a weighted k-NN on frozen features of `train_examples` labelled NIH train
  # images, scored as mean AUC on the validation split (knn/mean_auc).
  c.monitor = ml_collections.ConfigDict()
  c.monitor.every_steps = 2000     # 0 = off
  c.monitor.k = 20
  c.monitor.temperature = 0.07
  c.monitor.train_examples = 10000  # seeded subset; <= 0: the whole split
  c.monitor.val_examples = 0        # <= 0: the whole validation split
  c.monitor.batch_size = 128
  c.monitor.dataset = ''            # labelled build to score; '' = the first of c.dataset

  # Checkpoints and logs.
  c.checkpoint_every_steps = 1000
  c.keep_last_checkpoints = 3
  c.keep_every_steps = 50_000  # also keep every K-th step forever (0: none)
  c.async_checkpointing = True
  c.log_every_steps = 50
  c.inject_nan_at_step = -1    # fault injection for testing the NaN guard
  # JAX's persistent compilation cache, so a resumed run does not compile again:
  # '' = WORKDIR/compilation_cache, 'none' = off, or a directory (shared by runs).
  c.compilation_cache_dir = ''
  # Resuming a workdir with another batch size, learning rate, seed or
  # augmentation is refused unless those fields are listed here, comma-separated
  # ('global_batch_size,optim.base_lr'; 'optim' covers optim.*).
  c.allow_resume_changes = ''

  if variant == 'paper':
    c.optim.weight_decay = 1e-5
    # The paper states lr 3e-5 for LARS; as a peak lr that is base_lr * 256 / batch.
    c.optim.base_lr = 3e-5 * 256 / c.global_batch_size
  elif variant == 'smoke':
    c.model = models.model_config('tiny')
    c.synthetic_images = 64
    c.synthetic_image_size = 128
    c.image_size = 96
    c.global_batch_size = 16
    c.worker_count = 0
    c.num_epochs = 1
    c.num_train_steps = 8
    c.optim.warmup_epochs = 0.5
    c.checkpoint_every_steps = 4
    c.keep_every_steps = 0
    c.log_every_steps = 1
    c.monitor.every_steps = 0  # off on CPU smoke runs (--config.monitor.every_steps=4 to try)
  return c
