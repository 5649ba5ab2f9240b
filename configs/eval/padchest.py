r"""Classification on PadChest (mean AUC over the build's classes; not in the paper).

  python -m mlvicx_jax.evaluate --config=configs/eval/padchest.py \
      --config.checkpoint=DIR --config.data_dir=TFDS_DIR --workdir=OUT
  --config=configs/eval/padchest.py:smoke   tiny random-init model, 1 run, 2 epochs

Values: configs/eval/common.py (the official downstream recipe). The build
(`python -m mlvicx_jax.data.prepare --dataset=padchest`, docs/data.md) splits
the patients 70 / 10 / 20 % into train, validation and test, seeded.

  classes    'all' (default): the build's class list, the 22 findings of
             data/info.py PADCHEST_CLASSES plus those a `--min_positives`
             build added; or a comma list of PadChest's label names
             ('pleural effusion,cardiomegaly'). PadChest has no uncertain
             labels: every entry counts.

Which build is read: config.build (configs/eval/common.py) names one of
several ('s256_physician'); '' reads the only PadChest build under data_dir,
or the default one (s256) when several are there.

Physician-labelled test: a physician-only build (`prepare --physician_only`:
the 39,053 rows whose reports physicians labelled, the usual test set of
published PadChest results), read with --config.build=s256_physician, makes
every split of the run physician-labelled, training included.
Training on every row and testing on the physician rows alone is not
offered: the two builds split their own patients, so a physician build's
test patient may be a training patient of the full build.
"""
from configs.eval import common


def get_config(arg: str = ''):
  variant = arg or 'official'
  c = common.classification('padchest')
  c.classes = 'all'            # 'all' | 'pleural effusion,cardiomegaly,...'
  if variant == 'smoke':
    common.smoke(c)
  elif variant != 'official':
    raise ValueError(f"configs/eval/padchest.py: unknown variant {variant!r}; "
                     "use '' or 'smoke'")
  return c
