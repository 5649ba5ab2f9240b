r"""Transfer across hospitals: train a classifier on one build, test it on others.

  python -m mlvicx_jax.evaluate --config=configs/eval/transfer.py \
      --config.checkpoint=DIR --config.data_dir=TFDS_DIR --workdir=OUT
  --config=configs/eval/transfer.py:smoke   NIH -> CheXpert and NIH -> PadChest, tiny
                                            random-init model, synthetic builds made in OUT
  --config.transfer.train_on='("padchest",)' --config.transfer.test_on='("nih",)'
                                            PadChest -> NIH (any classification task trains)

For each dataset of `transfer.train_on` (A) every (label fraction, seed) run
is a normal classification run (configs/eval/common.py's recipe, `protocol`
frozen or finetune); its saved classifier is then scored on A's test split
(in-domain) and on the test split of each build of `transfer.test_on` (B),
over the findings A and B share (mlvicx_jax/data/shared_findings.py), with
bootstrap intervals and the drop B - A. All builds live under one data_dir.

  classes    the columns A trains on ('all'; CheXpert: also 'competition').
  uncertain  how a build's uncertain labels are read, A's or B's
             (data/label_policy.py; CheXpert only): 'ignore' (default)
             leaves them out of that finding's AUC.
"""
import ml_collections

from configs.eval import common


def get_config(arg: str = ''):
  variant = arg or 'official'
  c = common.classification('transfer')  # config.task of a transfer run
  c.classes = 'all'            # every class of the training build
  c.uncertain = 'ignore'       # 'ignore' | 'u_ones' | 'u_zeros', as configs/eval/chexpert.py
  c.label_fractions = (1.0,)   # transfer of fully trained probes; any fractions work
  c.transfer = ml_collections.ConfigDict()
  # A, the builds the classifiers train on: classification tasks (nih, vinbig, rsna, chexpert,
  # padchest; vocabulary.CLASSIFICATION_TASKS). B, those they are tested on: data/shared_findings.py.
  c.transfer.train_on = ('nih',)
  c.transfer.test_on = ('chexpert', 'padchest')
  c.synthetic_images = 0       # > 0 with no data_dir: synthetic builds made in the workdir
  c.synthetic_image_size = 128
  if variant == 'smoke':
    common.smoke(c)
    c.protocol = 'frozen'      # the cached linear probe: seconds on a CPU
    c.synthetic_images = 120   # per dataset
  elif variant != 'official':
    raise ValueError(f"configs/eval/transfer.py: unknown variant {variant!r}; "
                     "use '' or 'smoke'")
  return c
