r"""SIIM-ACR pneumothorax segmentation with a U-Net on a pretrained encoder.

  python -m mlvicx_jax.segment --config=configs/eval/siim.py \
      --config.checkpoint=PRETRAIN_WORKDIR --config.data_dir=TFDS_DIR --workdir=OUT \
      [--config.protocol=frozen|finetune] [--config.label_fractions='(0.3, 1.0)']

Each (label fraction, seed) run writes OUT/run_record_siim_<protocol>_f<f>_seed<s>
.json/.csv with the validation Dice of its best epoch (`val.dice`, the paper's
number) and the test split's Dice with those parameters (`test.dice`), plus
per-image test Dice (.npz). See mlvicx_jax/evaluate/segmentation.py.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Segmentation config file[:variant].',
                                lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where run records and predictions go.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from mlvicx_jax.evaluate import segmentation  # pylint: disable=g-import-not-at-top
  records = segmentation.run(flags.FLAGS.config, _WORKDIR.value)
  for r in records:
    print(f"siim {r['protocol']} f={r['label_fraction']:g} seed={r['seed']}: "
          f"validation Dice {r['val']['dice']:.4f}, {r.get('test_split', 'test')} Dice "
          f"{r['test']['dice']:.4f} (best epoch {r.get('best_epoch')})")


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
