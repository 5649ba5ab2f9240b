r"""Downstream evaluation of a pretrained encoder, every task (SPEC section 4).

  python -m mlvicx_jax.evaluate --config=configs/eval/<nih|vinbig|rsna|siim|chexpert>.py \
      --config.checkpoint=PRETRAIN_WORKDIR --config.data_dir=TFDS_DIR --workdir=OUT \
      [--config.protocol=frozen|finetune] [--config.label_fractions='(0.01, 0.1)'] \
      [--config.seeds='(0, 1, 2)'] [--config.checkpoint=random] \
      [--config.encoder.context_blocks=keep|drop]

Every (label fraction, seed) run writes OUT/run_record_<task>_<protocol>_f<f>_seed<s>
.json/.csv, its test predictions (.npz) and, with config.save_model, the trained
classifier (OUT/classifiers/, for `python -m mlvicx_jax.gradcam`) or U-Net
(OUT/unets/). `python -m mlvicx_jax.report --runs=OUT` builds the tables.
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Evaluation config file[:variant].',
                                lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where run records, predictions and '
                               'trained models go.')


def record_line(r) -> str:
  """One line per run: what a user checks first."""
  value = r['test'][r['metric_name']]
  ci = r.get('ci95')
  ci_text = f' [{ci[0]:.3f}, {ci[1]:.3f}]' if ci else ''
  floor = (r.get('floors') or {}).get(r['metric_name'])
  floor_text = f', empty-prediction floor {floor:.3f}' if floor is not None else ''
  return (f"{r['task']} {r['protocol']} f={r['label_fraction']:g} seed={r['seed']}: "
          f"test {r['metric_name']} {value:.4f}{ci_text}{floor_text} "
          f"(best epoch {r.get('best_epoch')})")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from mlvicx_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from mlvicx_jax import evaluate  # pylint: disable=g-import-not-at-top
  try:
    records = evaluate.run(flags.FLAGS.config, _WORKDIR.value)
  except (checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
    logging.flush()
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  for r in records:
    print(record_line(r))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
