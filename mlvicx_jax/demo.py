"""The embedded demo (synthetic NIH -> MLVICX pretraining -> frozen linear probes).

`python -m mlvicx_jax.main --config=configs/demo.py --workdir=DIR` runs it
(the config's `demo` section selects this driver). It prepares its data
before pretraining, pretrains, then probes two encoders of one architecture
that differ only in pretraining: the pretrained one, and the pretraining
network's own initialisation saved as a checkpoint (its BatchNorm statistics
are then re-estimated on the probe's training images, as for every
random-init row). The margin between them is given with a paired bootstrap
95% interval over the test images.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from mlvicx_jax import checkpoint
from mlvicx_jax import evaluate
from mlvicx_jax import models
from mlvicx_jax.evaluate import metrics
from mlvicx_jax.evaluate import records as records_lib
from mlvicx_jax.evaluate import report_lib

SUMMARY = 'demo_summary.json'
ENCODERS = ('pretrained', 'random_init')


def save_random_init(config, path: str) -> str:
  """The untrained network (seed of the pretraining run) as a checkpoint."""
  if os.path.isdir(path):
    return path
  model = models.build_model(config.model)
  variables = jax.jit(lambda rng: model.init(
      rng, jnp.zeros((2, config.image_size, config.image_size, 3)), train=False))(
          jax.random.PRNGKey(config.seed))
  meta = {'model_config': checkpoint.config_to_json(config.model), 'source': 'random init',
          'random_init': True}
  return checkpoint.save_model(path, jax.device_get(variables), meta)


def prepare_synthetic_data(config, workdir: str) -> None:
  """Configs with synthetic_images > 0 and no data_dir (demo, smoke) get a synthetic NIH.

  Made once in WORKDIR/synthetic_nih by process 0, before pretraining starts;
  sets config.data_dir.
  """
  if config.data_dir or config.synthetic_images <= 0:
    return
  from mlvicx_jax.data import prepare  # pylint: disable=g-import-not-at-top
  root = os.path.join(os.path.abspath(workdir), 'synthetic_nih')
  if jax.process_index() == 0:
    prepare.prepare_synthetic(config.dataset, root, config.synthetic_images,
                              image_size=config.synthetic_image_size, seed=config.seed)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('synthetic pretraining data ready')
  config.data_dir = os.path.join(root, 'tfds')


def margins(config, runs: dict) -> dict:
  """Per label fraction: both encoders' mean AUC (mean over seeds) and the paired margin."""
  out = {}
  for fraction in config.demo.label_fractions:
    fraction = float(fraction)
    scores, labels = {}, None
    for name in ENCODERS:
      chosen = [r for r in runs[name] if r['label_fraction'] == fraction]
      preds = [records_lib.load_predictions(r) for r in chosen]
      labels = preds[0]['labels']
      scores[name] = [p['scores'] for p in preds]
      scores[name + '_auc'] = [r['test']['mean_auc'] for r in chosen]
    paired = metrics.paired_bootstrap_mean_auc_diff(
        labels, scores['pretrained'], scores['random_init'],
        n_boot=config.demo_margin_n_boot, seed=0)
    out[f'{fraction:g}'] = {
        'pretrained_mean_auc': float(np.mean(scores['pretrained_auc'])),
        'random_init_mean_auc': float(np.mean(scores['random_init_auc'])),
        'margin': paired['diff'], 'margin_ci95': list(paired['ci95']),
        'seeds': len(scores['pretrained'])}
  return out


def run(config, workdir: str, started: float) -> dict:
  """Data, pretraining, probes of both encoders; writes the report and the summary."""
  from mlvicx_jax.train import config_check  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import loop  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(workdir)
  config_check.validate(config)
  prepare_synthetic_data(config, workdir)
  last = loop.pretrain(config, workdir)
  if last.get('preempted'):
    return {}
  checkpoints = {'pretrained': workdir,
                 'random_init': save_random_init(config, os.path.join(workdir, 'random_init'))}
  runs, run_dirs = {}, []
  for name in ENCODERS:
    probe = config.demo.copy_and_resolve_references()
    probe.checkpoint, probe.data_dir, probe.name = checkpoints[name], config.data_dir, name
    out = os.path.join(workdir, 'probe', name)
    runs[name] = evaluate.run(probe, out)
    run_dirs.append(out)
  by_fraction = margins(config, runs)
  report_dir = os.path.join(workdir, 'report')
  report_lib.build_report(run_dirs, report_dir, labels=list(ENCODERS), n_boot=0)
  headline = by_fraction[f'{float(config.demo.label_fractions[0]):g}']
  summary = {'pretrained_mean_auc': headline['pretrained_mean_auc'],
             'random_init_mean_auc': headline['random_init_mean_auc'],
             'margin': headline['margin'], 'margin_ci95': headline['margin_ci95'],
             'label_fraction': float(config.demo.label_fractions[0]),
             'seeds': list(config.demo.seeds),
             'by_label_fraction': by_fraction,
             'pretraining': {k: last[k] for k in ('loss', 'global/std', 'local/std') if k in last},
             'wall_seconds': time.time() - started,
             'report': os.path.join(report_dir, 'report.md')}
  with open(os.path.join(workdir, SUMMARY), 'w') as f:
    json.dump(summary, f, indent=2)
  print(summary_text(summary, len(config.demo.seeds), workdir))
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
