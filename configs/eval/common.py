"""Values shared by configs/eval/*.py: the official downstream recipe, every knob visible.

Defaults follow the official downstream script (ln_cls.py): AdamW, lr 3e-3
frozen / 3e-4 fine-tune, cosine warm restarts (T_0 10, T_mult 2), clip 1.0,
batch 128, early stopping with patience 10. Unlike the official script the
validation split is never the test split, the frozen encoder keeps its
BatchNorm in inference mode, and the encoder is the one that was pretrained
(context-bottleneck blocks kept).
"""
import ml_collections


def classification(task: str) -> ml_collections.ConfigDict:
  """NIH, VinBig-CXR and RSNA: the encoder plus one linear layer."""
  c = ml_collections.ConfigDict()
  c.task = task
  c.checkpoint = ''            # pretraining workdir / import_torch output, or 'random'
  c.data_dir = ''              # TFDS data_dir written by `python -m mlvicx_jax.data.prepare`
  c.build = ''                 # one of several builds of the task there ('s256_physician'); '' = the only one, or s256
  c.protocol = 'finetune'      # 'frozen' | 'finetune'
  c.name = ''                  # optional label of what is evaluated (report rows)

  c.encoder = ml_collections.ConfigDict()
  c.encoder.context_blocks = 'keep'  # as pretrained; 'drop': the official plain ResNet18
  c.encoder.bn_batches = 20          # re-estimation of BN statistics ('drop', random init):
  c.encoder.bn_batch_size = 64       #   batches x size of un-augmented training images
  c.encoder.model_variant = 'official'  # architecture of checkpoint='random' only

  c.label_fractions = (0.01, 0.1, 0.3, 1.0)
  c.seeds = (0, 1, 2)          # one run per fraction and seed
  c.label_subset = 'fixed'     # one subset for every seed (official); 'per_seed'
  c.label_subset_seed = 0      # the seed of the 'fixed' subset
  c.positive_per_class = True  # every class with a positive in train gets one in the subset

  c.image_size = 224
  c.batch_size = 128           # official ln_cls.py default
  c.eval_batch_size = 256
  c.num_epochs = 300           # upper bound; early stopping ends runs sooner
  c.patience = 10              # epochs without a better validation metric
  c.worker_count = 4           # grain worker processes (0: decode in this process)
  c.augment = 'official'       # 'official' (resize + h-flip) or 'mild' (crop, flip, jitter)
  c.frozen_feature_cache = True  # frozen + 'official': features computed once per trunk

  c.optim = ml_collections.ConfigDict()
  c.optim.lr_frozen = 3e-3
  c.optim.lr_finetune = 3e-4
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.grad_clip_norm = 1.0   # <= 0 disables
  c.optim.schedule = 'cosine_warm_restarts'  # or 'constant'
  c.optim.restart_period = 10    # epochs of the first cosine cycle (T_0)
  c.optim.restart_mult = 2       # cycle length growth (T_mult)
  c.optim.min_lr = 1e-6          # eta_min

  c.n_boot = 1000              # bootstrap resamples for the test CIs (0: none)
  c.target_sensitivity = 0.9   # operating point: highest validation threshold reaching it
  c.calibration = ml_collections.ConfigDict()
  c.calibration.temperature = False  # fit one temperature on validation, record test ECE
  c.save_model = True          # keep the best classifier (Grad-CAM reads it)
  c.save_predictions = True
  c.skip_existing = True       # a run whose record exists is not redone
  return c


def segmentation() -> ml_collections.ConfigDict:
  """SIIM-ACR: a U-Net on the encoder (paper: 30% and 100%, batch 32, Adam 3e-4)."""
  c = classification('siim')
  c.label_fractions = (0.3, 1.0)
  c.batch_size = 32
  c.eval_batch_size = 32
  c.num_epochs = 100
  c.decoder_widths = (256, 128, 64, 32, 16)  # layer3, layer2, layer1, stem, full resolution
  c.dice_smooth = 1.0          # soft-Dice loss smoothing
  c.bce_weight = 1.0
  c.dice_weight = 1.0
  c.optim.lr_frozen = 3e-4
  c.optim.lr_finetune = 3e-4
  c.optim.schedule = 'constant'
  c.optim.grad_clip_norm = 0.0  # plain Adam (AdamW with weight decay 0)
  c.save_model = False         # True keeps the best U-Net under workdir/unets/
  del c.frozen_feature_cache, c.target_sensitivity, c.calibration  # classification only
  return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A CPU-minutes run: tiny random-init model, one fraction and seed, 2 epochs."""
  c.checkpoint = 'random'
  c.encoder.model_variant = 'tiny'
  c.encoder.bn_batches = 2
  c.encoder.bn_batch_size = 16
  c.label_fractions = (1.0,)
  c.seeds = (0,)
  c.image_size = 96
  c.batch_size = 16
  c.eval_batch_size = 32
  c.num_epochs = 2
  c.worker_count = 0
  c.n_boot = 100
  if 'decoder_widths' in c:
    c.decoder_widths = (32, 16, 16, 8, 8)
    c.batch_size = 8
    c.eval_batch_size = 16
  return c
