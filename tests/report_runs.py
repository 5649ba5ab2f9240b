"""Hand-made run records for the report tests, and readers of its markdown tables."""

import json
import re

import numpy as np
import pytest

from mlvicx_jax.evaluate import record_files
from mlvicx_jax.evaluate import records

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# Per-image Dice floors of SIIM seeds 0 and 1: they differ, so the floor row is their mean.
PER_IMAGE_FLOORS = (0.50, 0.52)
CLASSES = ['Atelectasis', 'Effusion']
KEPT = {'context_blocks': 'keep', 'bn_statistics': 'checkpoint',
        'bn_batches': None, 'bn_images': None, 'random_init': False}
RANDOM = {'context_blocks': 'keep', 'bn_statistics': 're-estimated',
          'bn_batches': 50, 'bn_images': 1600, 'random_init': True}


def write_run_set(root, nih, siim, with_predictions, rsna=(), fixed=True, encoder=None):
  rng = np.random.default_rng(len(str(root)))
  protocol_fields = lambda seed, metric: dict(
      encoder=encoder or (KEPT if fixed else RANDOM), selection_metric=metric,
      label_subset={'mode': 'fixed' if fixed else 'per_seed',
                    'seed': 0 if fixed else seed, 'positive_per_class': fixed,
                    'size': 10, 'added_for_positives': 3 * fixed})
  for (protocol, fraction), values in nih.items():
    for seed, value in enumerate(values):
      per_class = {'Atelectasis': value - 0.01, 'Effusion': value + 0.01}
      record = records.make_record(
          'nih', protocol, fraction, seed, f'{root}/ckpt',
          {'mean_auc': value, 'per_class_auc': per_class}, best_epoch=seed,
          **protocol_fields(seed, 'mean_auc'))
      predictions = None
      if with_predictions and seed == 0:
        labels = (rng.random((300, 2)) < 0.4).astype(np.int64)
        scores = rng.random((300, 2)) + 0.5 * labels
        predictions = {'labels': labels, 'scores': scores,
                       'class_names': CLASSES}
      record_files.write_run_record(
          str(root / f'{protocol}_{fraction}_{seed}'), record, predictions)
  for (protocol, fraction), values in siim.items():
    for seed, dice in enumerate(values):
      floors = dict(dice=0.0, dice_positive=0.0,
                    dice_per_image=PER_IMAGE_FLOORS[seed])
      record = records.make_record(
          'siim', protocol, fraction, seed, None,
          dict(zip(('dice', 'dice_positive', 'dice_per_image'), dice)),
          floors=floors, val_floors=floors, **protocol_fields(seed, 'dice'))
      record_files.write_run_record(str(root), record)
  for (protocol, fraction), values in dict(rsna).items():
    for seed, (accuracy, auc) in enumerate(values):
      record = records.make_record(
          'rsna', protocol, fraction, seed, None,
          {'accuracy': accuracy, 'mean_auc': auc},
          **protocol_fields(seed, 'accuracy'))
      record_files.write_run_record(str(root), record)


def table_after(markdown, heading_start):
  """Rows (lists of cells) of the first table after a heading."""
  section = markdown.split(heading_start, 1)[1].split('\n#', 1)[0]
  return [[c.strip() for c in line.strip().strip('|').split('|')]
          for line in section.splitlines()
          if line.startswith('|') and not line.startswith('|---')]


def cell_numbers(cell):
  return [float(x) for x in re.findall(r'\d+\.\d+', cell)]


def assert_each_is_refused_by_name(tmp_path, cases):
  """Each (record, text) written alone in a directory: loading it fails with
  one error that names the file and contains `text` (the field)."""
  for i, (record, text) in enumerate(cases):
    path = tmp_path / f'case{i}' / 'run_record_bad.json'
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=re.escape(str(path))) as error:
      record_files.load_run_records(str(path.parent))
    assert text in str(error.value)
