r"""Classification on CheXpert (mean AUC over the chosen observations; not in the paper).

  python -m mlvicx_jax.evaluate --config=configs/eval/chexpert.py \
      --config.checkpoint=DIR --config.data_dir=TFDS_DIR --workdir=OUT
  --config=configs/eval/chexpert.py:all     all 14 observations
  --config=configs/eval/chexpert.py:smoke   tiny random-init model, 1 run, 2 epochs

Values: configs/eval/common.py (the official downstream recipe). The build
(`python -m mlvicx_jax.data.prepare --dataset=chexpert`) tests on the
official valid.csv and validates on a patient-wise hold-out of train.csv.
A frontal-only build (`prepare --frontal_only`) is read when it is the only
CheXpert build under data_dir (beside the default build, that one is read).

  classes    'competition': the CheXpert competition's five (Atelectasis,
             Cardiomegaly, Consolidation, Edema, Pleural Effusion); 'all';
             or a comma list of observation names.
  uncertain  how the labeller's uncertain (-1.0) labels are read
             (data/label_policy.py): 'ignore' (default) leaves them out of
             the loss and of that class's AUC; 'u_ones' reads them as
             positive, 'u_zeros' as negative. Blank cells are negatives.
The record's `label_policy` states both.
"""
from configs.eval import common


def get_config(arg: str = ''):
  variant = arg or 'official'
  c = common.classification('chexpert')
  c.classes = 'competition'    # 'competition' | 'all' | 'Edema,Pleural Effusion,...'
  c.uncertain = 'ignore'       # 'ignore' | 'u_ones' | 'u_zeros'
  if variant == 'all':
    c.classes = 'all'
  elif variant == 'smoke':
    common.smoke(c)
  elif variant != 'official':
    raise ValueError(f"configs/eval/chexpert.py: unknown variant {variant!r}; "
                     "use '', 'all' or 'smoke'")
  return c
