"""The online k-NN monitor of pretraining: is the representation getting better?

Every `monitor.every_steps` the pretraining loop embeds a seeded, labelled
subset of the train split (`monitor.train_examples`) and the validation split with
the current network in inference mode, and scores a weighted k-NN classifier
of the frozen `features` (knn.py: k = 20, cosine, votes exp(s / 0.07)) as
mean AUC on validation. No probe is trained and no evaluation job is
launched; the number is logged as `knn/mean_auc`.

Every process embeds the whole monitor set on its first local device with
its local copy of the replicated parameters (no collectives), so all
processes agree; only process 0 writes the value.
"""
import time

from absl import logging
import jax
import numpy as np

from mlvicx_jax.data import pipelines
from mlvicx_jax.data import sources
from mlvicx_jax.data import splits
from mlvicx_jax.train import knn


def _subset(data_dir: str, dataset: str, split: str, count: int, seed: int):
  """Seeded positions of `count` examples of the split (all when count <= 0 or too many)."""
  names = sources.file_names(data_dir, dataset, split)
  if count <= 0 or count >= len(names):
    return None
  return splits.label_fraction_indices(names, count / len(names), seed)


def _local(tree):
  """This process's copy of replicated global arrays, on its first local device."""
  return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)


class KnnMonitor:
  """monitor(variables) -> {'knn/mean_auc': float}."""

  def __init__(self, config, data_dir: str, model, dataset: str):
    """dataset: the labelled build to score (train/data.monitor_dataset)."""
    self._cfg = config.monitor
    self._data_dir, self._dataset = data_dir, dataset
    self._image_size = config.image_size
    self._seed = config.seed
    self._indices = {
        'train': _subset(data_dir, self._dataset, 'train', self._cfg.train_examples,
                         config.seed),
        'validation': _subset(data_dir, self._dataset, 'validation', self._cfg.val_examples,
                              config.seed)}
    self._embed = jax.jit(lambda variables, images: model.apply(
        variables, images, train=False)['features'])

  def features(self, variables, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of the monitor's examples of `split`, padding rows dropped."""
    loader = pipelines.classification_loader(
        self._data_dir, self._dataset, split=split, image_size=self._image_size,
        batch_size=self._cfg.batch_size, seed=self._seed, train=False,
        indices=self._indices[split], shard_index=0, shard_count=1)
    features, labels = [], []
    for batch in loader:
      keep = np.asarray(batch['mask'], bool)
      if keep.any():
        features.append(np.asarray(self._embed(variables, batch['image']))[keep])
        labels.append(np.asarray(batch['label'])[keep])
    return np.concatenate(features), np.concatenate(labels)

  def __call__(self, variables) -> dict:
    start = time.time()
    variables = _local(variables)
    train_x, train_y = self.features(variables, 'train')
    val_x, val_y = self.features(variables, 'validation')
    mean_auc, _ = knn.knn_mean_auc(train_x, train_y, val_x, val_y, k=self._cfg.k,
                                   temperature=self._cfg.temperature)
    logging.info('k-NN monitor: mean AUC %.4f (%d train, %d validation images, %.1fs)',
                 mean_auc, len(train_x), len(val_x), time.time() - start)
    return {'knn/mean_auc': float(mean_auc)}
