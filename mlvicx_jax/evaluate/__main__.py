r"""Downstream evaluation of a pretrained encoder, every task (SPEC section 4).

  python -m mlvicx_jax.evaluate --config=configs/eval/<nih|vinbig|rsna|siim|chexpert|padchest|transfer>.py \
      --config.checkpoint=PRETRAIN_WORKDIR --config.data_dir=TFDS_DIR --workdir=OUT \
      [--config.protocol=frozen|finetune] [--config.label_fractions='(0.01, 0.1)'] \
      [--config.seeds='(0, 1, 2)'] [--config.checkpoint=random] \
      [--config.encoder.context_blocks=keep|drop]

Every (label fraction, seed) run writes OUT/run_record_<task>_<protocol>_f<f>_seed<s>
.json/.csv, its test predictions (.npz) and, with config.save_model, the trained
classifier (OUT/classifiers/, for `python -m mlvicx_jax.gradcam`) or U-Net
(OUT/unets/). configs/eval/transfer.py also writes OUT/transfer_record_<A>_to_<B>_...json
(and, with no data_dir and synthetic_images > 0, as its :smoke, first makes synthetic
builds of its datasets in OUT/synthetic/). `python -m mlvicx_jax.report --runs=OUT`
builds the tables.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mlvicx_jax import cli

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


def transfer_line(r) -> str:
  """One line per transfer record: the mean AUC on B beside A's, and the drop."""
  fmt = lambda v: '-' if v is None else f'{v:.4f}'
  ci = r['transferred']['ci95']
  ci_text = f' [{ci[0]:.3f}, {ci[1]:.3f}]' if ci else ''
  count = sum(f['in_mean'] for f in r['findings'].values())
  return (f"{r['train_on']} -> {r['test_on']} {r['protocol']} f={r['label_fraction']:g} "
          f"seed={r['seed']}: mean AUC over {count} shared findings "
          f"{fmt(r['transferred']['mean_auc'])}{ci_text} (in-domain "
          f"{fmt(r['in_domain']['mean_auc'])}, drop {fmt(r['drop']['mean_auc'])})")


def synthetic_builds(config, workdir: str) -> None:
  """A config with synthetic_images > 0 and no data_dir (transfer :smoke) gets synthetic builds.

  Each dataset of transfer.train_on and transfer.test_on, written in its real
  layout to WORKDIR/synthetic/raw_<dataset> and built into WORKDIR/synthetic/tfds
  (both reused when there); sets config.data_dir.
  """
  if config.data_dir or config.get('synthetic_images', 0) <= 0:
    return
  from mlvicx_jax import synthetic  # pylint: disable=g-import-not-at-top
  root = os.path.join(os.path.abspath(workdir), 'synthetic')
  section = config.get('transfer') or {}
  datasets = tuple(section.get('train_on', (config.task,))) + tuple(section.get('test_on', ()))
  for dataset in dict.fromkeys(datasets):
    data_dir = synthetic.prepare(dataset, root, config.synthetic_images,
                                 image_size=config.synthetic_image_size,
                                 stored_size=config.image_size)
  config.data_dir = data_dir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from mlvicx_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from mlvicx_jax import storage  # pylint: disable=g-import-not-at-top
  from mlvicx_jax import evaluate  # pylint: disable=g-import-not-at-top
  try:
    if 'task' not in flags.FLAGS.config:
      raise ValueError('config: no field task: not an evaluation config (configs/eval/*.py; '
                       'pretraining configs are run by python -m mlvicx_jax.main)')
    synthetic_builds(flags.FLAGS.config, _WORKDIR.value)
    records = evaluate.run(flags.FLAGS.config, _WORKDIR.value)
  except (checkpoint.CheckpointError, storage.SaveError, FileNotFoundError, ValueError) as e:
    logging.flush()
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  for r in records:
    print(transfer_line(r) if r.get('kind') == 'transfer' else record_line(r))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.check_config_flag()
  app.run(main)
