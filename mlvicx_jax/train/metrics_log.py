"""Where training metrics go: metrics.jsonl, TensorBoard and a progress bar.

Only process 0 writes; every process keeps the same interface.
"""
import json
import os

import jax
import tqdm


class MetricsWriter:

  def __init__(self, workdir: str, total_steps: int, initial_step: int = 0):
    self.enabled = jax.process_index() == 0
    self._jsonl = self._tb = self._bar = None
    self._knn = ''
    if not self.enabled:
      return
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
    except ImportError:  # TensorBoard files are optional; metrics.jsonl is not.
      self._tb = None
    self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit='step',
                          dynamic_ncols=True, mininterval=5.0)

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    record = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for name, value in record.items():
        if name != 'step':
          self._tb.add_scalar(name, value, step)
      self._tb.flush()
    postfix = {'loss': f"{record['loss']:.3f}"}
    if 'knn/mean_auc' in record:
      self._knn = f"{record['knn/mean_auc']:.3f}"
    if self._knn:
      postfix['knn_auc'] = self._knn  # the latest monitor value stays in view
    self._bar.set_postfix(postfix, refresh=False)

  def event(self, step: int, name: str, fields: dict):
    """One non-metric line, {'step', 'event': name, ...fields} (a rollback); its numbers
    also go to TensorBoard as name/field."""
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({'step': int(step), 'event': name, **fields}) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for field, value in fields.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(f'{name}/{field}', value, step)
      self._tb.flush()

  def rewind(self, step: int):
    """The progress bar back to `step` (after a rollback)."""
    if self._bar is not None:
      self._bar.n = step
      self._bar.refresh()

  def advance(self, n: int = 1):
    if self._bar is not None:
      self._bar.update(n)

  def close(self):
    for handle in (self._jsonl, self._tb, self._bar):
      if handle is not None:
        handle.close()
