r"""Where the demo's classifier looks, and whether its scores are calibrated.

  python benchmarks/demo_localisation.py --workdir=/tmp/mlvicx_demo [--out=DIR]

Reads a finished demo workdir (`python -m mlvicx_jax.demo --workdir=...`:
its synthetic NIH build has the box list the synthetic writer drew), trains
the demo's frozen linear probe (100% labels, seed 0) on the pretrained
encoder and on the same network at its random initialisation
(WORKDIR/random_init, the reference), with configs/eval/nih_localise.py's
localisation settings, and prints the pointing game (and IoU@0.5, mIoU) of
each beside the centre prior, and each probe's pooled test ECE, with
bootstrap 95% intervals over images. The full report (tables, reliability
diagrams, localisation figures) is written to OUT/report.
"""
import importlib
import os
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mlvicx_jax import evaluate  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import report  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.evaluate import calibration  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.evaluate import record_files  # pylint: disable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string('workdir', None, 'A finished demo workdir.')
_OUT = flags.DEFINE_string('out', None, 'Output directory (default WORKDIR/localisation).')
_CAM_LAYER = flags.DEFINE_enum('cam_layer', 'layer4', ['layer4', 'layer3'], 'Grad-CAM level.')


def localisation_config(workdir: str):
  """The demo's probe recipe with nih_localise's settings and the demo's random init."""
  config = importlib.import_module('configs.demo').get_config('').probe
  localise = importlib.import_module('configs.eval.nih_localise').get_config('').localise
  config.label_fractions, config.seeds = (1.0,), (0,)
  config.checkpoint, config.name = workdir, 'MLVICX-pretrained'
  config.data_dir = os.path.join(workdir, 'synthetic_nih', 'tfds')
  config.localise = localise
  config.localise.reference = os.path.join(workdir, 'random_init')
  config.localise.cam_layer = _CAM_LAYER.value
  return config


def ece_with_interval(record: dict, n_boot: int = 1000, seed: int = 0) -> str:
  """Pooled test ECE (15 equal-width bins) and its bootstrap 95% interval over images."""
  predictions = record_files.load_predictions(record)
  labels, scores = predictions['labels'], predictions['scores']
  value = calibration.expected_calibration_error(labels, scores)
  rng = np.random.default_rng(seed)
  draws = [calibration.expected_calibration_error(labels[rows], scores[rows])
           for rows in (rng.integers(0, len(labels), len(labels)) for _ in range(n_boot))]
  low, high = np.percentile(draws, [2.5, 97.5])
  return f'{value:.3f} [{low:.3f}, {high:.3f}]'


def _interval(cell: dict, metric: str) -> str:
  low, high = cell['ci95'][metric]
  return f'{cell[metric]:.3f} [{low:.3f}, {high:.3f}]'


def main(argv):
  del argv
  workdir = os.path.abspath(_WORKDIR.value)
  out = _OUT.value or os.path.join(workdir, 'localisation')
  records = evaluate.run(localisation_config(workdir), out)
  paths = report.build_report([out], os.path.join(out, 'report'), n_boot=1000)
  print(f'Frozen linear probe, 100% labels, seed 0; Grad-CAM at {_CAM_LAYER.value}; '
        'bootstrap 95% intervals over test images')
  print('| map | pointing game | IoU@0.5 | mIoU | pooled test ECE (15 bins) | boxes (images) |')
  print('|---|---|---|---|---|---|')
  for r in records:
    loc = r['localisation']
    name = 'random init (WORKDIR/random_init)' if r['name'] == 'reference' else r['name']
    rows = [(name, loc['classifier']['overall'], ece_with_interval(r))]
    if r['name'] != 'reference':
      rows.append(('centre prior', loc['centre_prior']['overall'], '–'))
    for name, cell, ece in rows:
      print(f"| {name} | {_interval(cell, 'pointing_game')} | {_interval(cell, 'iou@0.5')} | "
            f"{_interval(cell, 'miou')} | {ece} | {cell['num_boxes']} ({cell['num_images']}) |")
  print(f"Report: {paths['markdown']}")


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
