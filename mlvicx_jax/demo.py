r"""The embedded demo: synthetic NIH -> MLVICX pretraining -> frozen linear probes.

  python -m mlvicx_jax.demo --workdir=DIR [--config=configs/demo.py[:smoke]]

Needs no downloaded data. It makes its data in DIR, pretrains
(`config.pretrain`), then probes (`config.probe`) two encoders of one
architecture that differ only in pretraining: the pretrained one, and the
pretraining network's own initialisation saved as a checkpoint (its
BatchNorm statistics are then re-estimated on the probe's training images,
as for every random-init row). The margin between them is given with a
paired bootstrap 95% interval over the test images. Re-running with the same
DIR resumes the pretraining and skips finished probes.
"""
import json
import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from mlvicx_jax import cli
from mlvicx_jax import evaluate
from mlvicx_jax import pretrained
from mlvicx_jax import report
from mlvicx_jax import synthetic
from mlvicx_jax.evaluate import metrics
from mlvicx_jax.evaluate import record_files
from mlvicx_jax.train import config_check
from mlvicx_jax.train import loop

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              'configs', 'demo.py')
config_flags.DEFINE_config_file('config', DEFAULT_CONFIG, 'Demo config file[:variant].',
                                lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the data, checkpoints, probes and '
                               'report go.')

SUMMARY = 'demo_summary.json'
ENCODERS = ('pretrained', 'random_init')


def margins(config, runs: dict) -> dict:
  """Per label fraction: both encoders' mean AUC (mean over seeds) and the paired margin."""
  out = {}
  for fraction in config.probe.label_fractions:
    fraction = float(fraction)
    scores, labels = {}, None
    for name in ENCODERS:
      chosen = [r for r in runs[name] if r['label_fraction'] == fraction]
      preds = [record_files.load_predictions(r) for r in chosen]
      labels = preds[0]['labels']
      scores[name] = [p['scores'] for p in preds]
      scores[name + '_auc'] = [r['test']['mean_auc'] for r in chosen]
    paired = metrics.paired_bootstrap_mean_auc_diff(
        labels, scores['pretrained'], scores['random_init'],
        n_boot=config.margin_n_boot, seed=0)
    out[f'{fraction:g}'] = {
        'pretrained_mean_auc': float(np.mean(scores['pretrained_auc'])),
        'random_init_mean_auc': float(np.mean(scores['random_init_auc'])),
        'margin': paired['diff'], 'margin_ci95': list(paired['ci95']),
        'seeds': len(scores['pretrained'])}
  return out


def run(config, workdir: str, started: float) -> dict:
  """Data, pretraining, probes of both encoders; writes the report and the summary."""
  workdir = os.path.abspath(workdir)
  missing = [name for name in ('pretrain', 'probe') if name not in config]
  if missing:
    raise config_check.ConfigError(
        f'config: no section {", ".join(missing)}: not a demo config (configs/demo.py; '
        'pretraining configs are run by python -m mlvicx_jax.main)')
  pretrain = config.pretrain
  config_check.validate(pretrain)
  synthetic.data_dir_for(pretrain, workdir)
  last = loop.pretrain(pretrain, workdir)
  if last.get('preempted'):
    return {}
  checkpoints = {'pretrained': workdir,
                 'random_init': pretrained.save_random_init(pretrain, os.path.join(workdir, 'random_init'))}
  runs, run_dirs = {}, []
  for name in ENCODERS:
    probe = config.probe.copy_and_resolve_references()
    probe.checkpoint, probe.data_dir, probe.name = checkpoints[name], pretrain.data_dir, name
    out = os.path.join(workdir, 'probe', name)
    runs[name] = evaluate.run(probe, out)
    run_dirs.append(out)
  by_fraction = margins(config, runs)
  report_dir = os.path.join(workdir, 'report')
  report.build_report(run_dirs, report_dir, labels=list(ENCODERS), n_boot=0)
  headline = by_fraction[f'{float(config.probe.label_fractions[0]):g}']
  summary = {'pretrained_mean_auc': headline['pretrained_mean_auc'],
             'random_init_mean_auc': headline['random_init_mean_auc'],
             'margin': headline['margin'], 'margin_ci95': headline['margin_ci95'],
             'label_fraction': float(config.probe.label_fractions[0]),
             'seeds': list(config.probe.seeds),
             'by_label_fraction': by_fraction,
             'pretraining': {k: last[k] for k in ('loss', 'global/std', 'local/std') if k in last},
             'wall_seconds': time.time() - started,
             'report': os.path.join(report_dir, 'report.md')}
  with open(os.path.join(workdir, SUMMARY), 'w') as f:
    json.dump(summary, f, indent=2)
  print(summary_text(summary, len(config.probe.seeds), workdir))
  return summary


def summary_text(summary: dict, seeds: int, workdir: str) -> str:
  lines = ['Frozen linear probes on the synthetic NIH test split (mean AUC over 14 labels, '
           f'mean of {seeds} seeds; margin with a paired bootstrap 95% interval over test '
           'images):',
           '  labels   MLVICX-pretrained   random-init   margin [95% CI]']
  for fraction, row in summary['by_label_fraction'].items():
    low, high = row['margin_ci95']
    lines.append(f"  {float(fraction):>5.0%}   {row['pretrained_mean_auc']:17.3f}   "
                 f"{row['random_init_mean_auc']:11.3f}   {row['margin']:+.3f} "
                 f"[{low:+.3f}, {high:+.3f}]")
  lines += [f"Report: {summary['report']}",
            f"Summary: {os.path.join(workdir, SUMMARY)} ({summary['wall_seconds']:.0f} s in all)"]
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  started = time.time()
  cli.quiet_libraries()
  run(flags.FLAGS.config, _WORKDIR.value, started)


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  cli.check_config_flag()
  app.run(cli.exit_on_user_errors(main, cli.pretraining_errors))
