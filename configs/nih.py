"""MLVICX pretraining on NIH ChestX-ray14.

  python -m mlvicx_jax.main --config=configs/nih.py --workdir=DIR        # official code's recipe
  python -m mlvicx_jax.main --config=configs/nih.py:paper --workdir=DIR  # paper text's values
  python -m mlvicx_jax.main --config=configs/nih.py:smoke --workdir=DIR  # tiny CPU run on synthetic NIH

Every field can be overridden on the command line: --config.optim.base_lr=0.1
"""
import ml_collections


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
  c.on_bad_record = 'stop'     # unreadable record: 'stop' naming it, or 'skip' to the next good one
  # VICReg's asymmetric two views (SPEC 2); view2 differs in blur and solarise.
  # On a grayscale film replicated to 3 channels only brightness and contrast
  # of ColorJitter act. 'on': 'device' = views made in the train step from the
  # stored uint8 image, 'host' = by the grain workers, 'auto' = 'device' on
  # GPU/TPU and 'host' on CPU (measured; docs/benchmarks.md).
  c.aug = ml_collections.ConfigDict()
  c.aug.on = 'auto'
  for name, blur_prob, solarize_prob in (('view1', 1.0, 0.0), ('view2', 0.1, 0.2)):
    view = ml_collections.ConfigDict()
    view.crop_scale = (0.08, 1.0)    # RandomResizedCrop area fraction
    view.crop_ratio = (3 / 4, 4 / 3)  # and aspect ratio
    view.interpolation = 'bicubic'
    view.hflip_prob = 0.5
    view.jitter_prob = 0.8           # ColorJitter(0.4, 0.4, ...) with this chance
    view.brightness = 0.4
    view.contrast = 0.4
    view.blur_prob = blur_prob
    view.blur_sigma = (0.1, 2.0)
    view.blur_kernel_size = 23       # torchvision GaussianBlur(23)
    view.solarize_prob = solarize_prob
    view.solarize_threshold = 128    # on the 0..255 scale
    view.rotation_prob = 0.0         # optional small rotation (off in VICReg)
    view.rotation_degrees = 10.0
    c.aug[name] = view
  c.aug.mean = (0.485, 0.456, 0.406)  # ImageNet: the encoder may start from ImageNet weights
  c.aug.std = (0.229, 0.224, 0.225)

  # Schedule.
  c.num_epochs = 300
  c.num_train_steps = -1       # > 0 overrides num_epochs
  c.seed = 0

  # Architecture (mlvicx_jax/models). Official code's values; ':paper' below.
  c.model = ml_collections.ConfigDict()
  c.model.stage_sizes = (2, 2, 2, 2)        # ResNet18
  c.model.width = 64                        # channels of the stem and layer1
  c.model.context_blocks = True             # context bottleneck (CBAM) after stem and each stage
  c.model.reduction = 2                     # channel-attention MLP ratio
  c.model.spatial_kernel = 7
  c.model.global_head = (4096, 4096, 4096)  # paper text: three layers of 2048
  c.model.head_hidden_norm = True           # BN after each hidden Linear of the global head
  c.model.head_output_norm = 'affine'       # BN after its last Linear: 'affine' | 'plain' | 'none'
  c.model.head_output_bias = True
  c.model.predictor = ()                    # BYOL / SimSiam predictor widths (empty: none)
  c.model.predictor_output_norm = 'none'
  c.model.multilevel = True                 # False: global VICReg only (L_G ablation)
  c.model.levels = (0, 1, 2, 3, 4)          # stem, layer1..layer4
  c.model.multilevel_size = 64              # common size of the bilinear resize
  c.model.multilevel_channels = 512         # width of the per-level 1x1 projection
  c.model.multilevel_pool = 4
  c.model.multilevel_head = (4096, 4096, 4096)
  c.model.aggregation = 'sum'               # paper text: 'concat'
  c.model.multilevel_impl = 'folded'        # 'naive' = resize to 64x64 first (official cost)
  c.model.dtype = 'float32'                 # compute dtype; parameters stay float32
  c.model.remat = 'none'                    # 'blocks': recompute each trunk block in backward (less memory)

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

  # Online k-NN monitor (mlvicx_jax/train/monitor.py): every `every_steps`,
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
  # A non-finite loss (VICReg runs at large batch can NaN late: facebookresearch/vicreg#27).
  # 'stop': end the run, the checkpoints hold the last good state. 'rollback':
  # restore the latest checkpoint, skip the input batches that led there, go on
  # (docs/faults.md); the decisions are stored in the checkpoints, so resume is exact.
  c.nonfinite = 'stop'             # 'stop' | 'rollback'
  c.nonfinite_skip_batches = 0     # batches skipped after restoring; 0: the window since the checkpoint plus the failing one
  c.nonfinite_lr_scale = 1.0       # learning-rate factor after a rollback ...
  c.nonfinite_lr_steps = 0         # ... for this many steps from the restored one
  c.nonfinite_max_rollbacks = 3    # then the run stops, listing every rollback
  c.inject_nan_at_step = -1        # fault injection: NaN at this stream position (tests)
  c.inject_nan_every_try = False   # tests: at this training step instead, on every retry
  # JAX's persistent compilation cache, so a resumed run does not compile again:
  # '' = WORKDIR/compilation_cache, 'none' = off, or a directory (shared by runs).
  c.compilation_cache_dir = ''
  # Resuming a workdir with another batch size, learning rate, seed or
  # augmentation is refused unless those fields are listed here, comma-separated
  # ('global_batch_size,optim.base_lr'; 'optim' covers optim.*).
  c.allow_resume_changes = ''

  if variant == 'paper':
    c.model.global_head = (2048, 2048, 2048)
    c.model.aggregation = 'concat'
    c.optim.weight_decay = 1e-5
    # The paper states lr 3e-5 for LARS; as a peak lr that is base_lr * 256 / batch.
    c.optim.base_lr = 3e-5 * 256 / c.global_batch_size
  elif variant == 'smoke':
    # A narrow, shallow network for CPU tests.
    c.model.stage_sizes = (1, 1, 1, 1)
    c.model.width = 16
    c.model.global_head = (128, 128, 128)
    c.model.multilevel_size = 16
    c.model.multilevel_channels = 32
    c.model.multilevel_head = (128, 128, 128)
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
