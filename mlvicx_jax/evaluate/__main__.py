r"""Downstream classification of a pretrained encoder (SPEC section 4).

  python -m mlvicx_jax.evaluate --config=configs/eval/nih.py \
      --config.checkpoint=PRETRAIN_WORKDIR --config.data_dir=TFDS_DIR --workdir=OUT \
      [--config.protocol=frozen|finetune] [--config.label_fractions='(0.01, 0.1)'] \
      [--config.seeds='(0, 1, 2)'] [--config.checkpoint=random]

Every (label fraction, seed) run writes OUT/run_record_<task>_<protocol>_f<f>_seed<s>
.json/.csv, its test predictions (.npz) and the trained classifier under
OUT/classifiers/ (for `python -m mlvicx_jax.gradcam`). A SIIM config
(configs/eval/siim.py) runs the U-Net program, as `python -m mlvicx_jax.segment`.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Evaluation config file[:variant].',
                                lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where run records, predictions and '
                               'classifiers go.')


def print_records(records) -> None:
  """One line per run: what a user checks first."""
  for r in records:
    value = r['test'][r['metric_name']]
    ci = r.get('ci95')
    ci_text = f' [{ci[0]:.3f}, {ci[1]:.3f}]' if ci else ''
    print(f"{r['task']} {r['protocol']} f={r['label_fraction']:g} seed={r['seed']}: "
          f"test {r['metric_name']} {value:.4f}{ci_text} (best epoch {r.get('best_epoch')})")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = flags.FLAGS.config
  if config.task == 'siim':
    from mlvicx_jax.evaluate import segmentation  # pylint: disable=g-import-not-at-top
    records = segmentation.run(config, _WORKDIR.value)
  else:
    from mlvicx_jax.evaluate import classify  # pylint: disable=g-import-not-at-top
    records = classify.run(config, _WORKDIR.value)
  print_records(records)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
