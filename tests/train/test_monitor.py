"""The online k-NN monitor inside a real pretraining run, against the same score
computed afterwards from the saved checkpoint with pretrained.load and knn.py."""
import json
import os

import numpy as np
import pytest

from conftest import load_config
from mlvicx_jax import pretrained
from mlvicx_jax.data import pipelines
from mlvicx_jax.data import sources
from mlvicx_jax.data import splits
from mlvicx_jax.train import knn
from mlvicx_jax.train import loop

TRAIN_EXAMPLES = 40


def _images_and_labels(data_dir, split, indices, size):
  loader = pipelines.classification_loader(data_dir, 'nih', split=split, image_size=size,
                                           batch_size=16, seed=0, train=False, indices=indices,
                                           shard_index=0, shard_count=1)
  images, labels = [], []
  for batch in loader:
    keep = np.asarray(batch['mask'], bool)
    images.append(np.asarray(batch['image'])[keep])
    labels.append(np.asarray(batch['label'])[keep])
  return np.concatenate(images), np.concatenate(labels)


@pytest.mark.filterwarnings('ignore:AUC undefined')  # 10 validation images: rare labels absent
def test_monitor_logs_the_knn_auc_of_the_current_network(nih_data_dir, tmp_path):
  config = load_config('configs/nih.py', 'smoke')
  config.data_dir = nih_data_dir
  config.num_train_steps = config.checkpoint_every_steps = 4
  config.async_checkpointing = False
  config.monitor.every_steps = 2
  config.monitor.train_examples = TRAIN_EXAMPLES
  config.monitor.batch_size = 16
  workdir = str(tmp_path / 'monitored')
  loop.pretrain(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    logged = [json.loads(line) for line in f]
  # Monitored after 2 and 4 steps: written with the records of steps 1 and 3 (0-based),
  # whose updates produced the networks it scored.
  assert [r['step'] for r in logged if 'knn/mean_auc' in r] == [1, 3]
  assert all(np.isfinite(r['loss']) for r in logged)

  encoder = pretrained.load(workdir)
  names = sources.file_names(nih_data_dir, 'nih', 'train')
  train_idx = splits.label_fraction_indices(names, TRAIN_EXAMPLES / len(names), config.seed)
  assert len(train_idx) == TRAIN_EXAMPLES
  train_x, train_y = _images_and_labels(nih_data_dir, 'train', train_idx, config.image_size)
  val_x, val_y = _images_and_labels(nih_data_dir, 'validation', None, config.image_size)
  embed = lambda x: np.asarray(encoder.embed(x)['features'])
  want, per_label = knn.knn_mean_auc(embed(train_x), train_y, embed(val_x), val_y)
  assert np.isfinite(per_label).sum() >= 2
  np.testing.assert_allclose(logged[-1]['knn/mean_auc'], want, rtol=1e-5)
