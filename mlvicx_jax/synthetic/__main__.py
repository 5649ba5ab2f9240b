r"""Writes a synthetic dataset in its real release layout.

  python -m mlvicx_jax.synthetic --dataset=nih --out=RAW --num_images=500 \
      --seed=0 [--image_size=256] [--nih_layout=images|kaggle]

Then `python -m mlvicx_jax.data.prepare --dataset=nih --manual_dir=RAW` builds it.
--dataset is one of synthetic.LAYOUTS (nih, vinbig, rsna, siim, chexpert, padchest).
"""
from absl import app
from absl import flags

from mlvicx_jax import synthetic

_DATASET = flags.DEFINE_enum('dataset', None, list(synthetic.LAYOUTS), 'Layout to write.')
_OUT = flags.DEFINE_string('out', None, 'Output folder (a manual_dir for prepare).')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 200, 'Number of images.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 256, 'Image width in pixels (real: 1024+).')
_NIH_LAYOUT = flags.DEFINE_enum('nih_layout', 'images', ['images', 'kaggle'],
                                "NIH: images/ or Kaggle's images_001/images/ ...")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  summary = synthetic.generate(_DATASET.value, _OUT.value, _NUM_IMAGES.value, _SEED.value,
                               _IMAGE_SIZE.value, _NIH_LAYOUT.value)
  print(f'{_DATASET.value} -> {_OUT.value}: {summary}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['dataset', 'out'])
  app.run(main)
