"""The embedded demo's evaluation half: probe pretrained vs random-init encoders.

Called by `mlvicx_jax.main` after pretraining when the config has a `demo`
section (configs/demo.py). The random-init encoder is the pretraining
network's own initialisation, saved as a checkpoint, so both probes use the
same architecture and differ only in pretraining.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from mlvicx_jax import checkpoint
from mlvicx_jax import models
from mlvicx_jax.evaluate import classify
from mlvicx_jax.evaluate import report_lib
from mlvicx_jax.train import data as train_data

SUMMARY = 'demo_summary.json'


def save_random_init(config, path: str) -> str:
  """The untrained network (seed of the pretraining run) as a checkpoint."""
  if os.path.isdir(path):
    return path
  model = models.build_model(config.model)
  variables = jax.jit(lambda rng: model.init(
      rng, jnp.zeros((2, config.image_size, config.image_size, 3)), train=False))(
          jax.random.PRNGKey(config.seed))
  meta = {'model_config': checkpoint.config_to_json(config.model), 'source': 'random init'}
  return checkpoint.save_model(path, jax.device_get(variables), meta)


def run(config, workdir: str, started: float) -> dict:
  """Probes both encoders at each label fraction and seed; writes the report and summary."""
  workdir = os.path.abspath(workdir)
  data_dir = train_data.ensure_pretraining_data(config, workdir)  # already there: no work
  runs = {'pretrained': workdir,
          'random_init': save_random_init(config, os.path.join(workdir, 'random_init'))}
  by_fraction, run_dirs = {}, []
  for name, ckpt in runs.items():
    probe = config.demo.copy_and_resolve_references()
    probe.checkpoint, probe.data_dir, probe.name = ckpt, data_dir, name
    out = os.path.join(workdir, 'probe', name)
    for record in classify.run(probe, out):
      by_fraction.setdefault(str(record['label_fraction']), {}).setdefault(name, []).append(
          record['test']['mean_auc'])
    run_dirs.append(out)
  means = {f: {name: float(np.mean(v)) for name, v in runs_.items()}
           for f, runs_ in by_fraction.items()}
  headline = means[str(float(config.demo.label_fractions[0]))]
  report_dir = os.path.join(workdir, 'report')
  report_lib.build_report(run_dirs, report_dir, labels=list(runs), n_boot=0)
  summary = {'pretrained_mean_auc': headline['pretrained'],
             'random_init_mean_auc': headline['random_init'],
             'margin': headline['pretrained'] - headline['random_init'],
             'label_fraction': float(config.demo.label_fractions[0]),
             'seeds': list(config.demo.seeds),
             'mean_auc_by_label_fraction': means,
             'wall_seconds': time.time() - started,
             'report': os.path.join(report_dir, 'report.md')}
  with open(os.path.join(workdir, SUMMARY), 'w') as f:
    json.dump(summary, f, indent=2)
  lines = [f'Frozen linear probes on the synthetic NIH test split (mean AUC over 14 labels, '
           f'mean of {len(config.demo.seeds)} seeds):',
           '  labels   MLVICX-pretrained   random-init']
  for fraction, row in means.items():
    lines.append(f"  {float(fraction):>5.0%}   {row['pretrained']:17.3f}   {row['random_init']:11.3f}")
  lines += [f"Report: {summary['report']}",
            f"Summary: {os.path.join(workdir, SUMMARY)} ({summary['wall_seconds']:.0f} s in all)"]
  print('\n'.join(lines))
  return summary
