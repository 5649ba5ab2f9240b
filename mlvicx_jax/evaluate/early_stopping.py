"""Early stopping on a validation metric (SPEC section 4: patience 10).

The protocol reports the test metric of the epoch with the best validation
score, so the tracker only decides; the training loop keeps a copy of the
parameters whenever `update` reports an improvement, and evaluates the test
split with that copy after stopping.

  stopper = EarlyStopping(patience=10, mode='max')
  for epoch in range(max_epochs):
    ...train...
    stop = stopper.update(epoch, validation_mean_auc)
    if stopper.improved:
      best_params = params
    if stop:
      break
  test with best_params; record stopper.best_epoch
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math
from typing import NamedTuple

_MODES = ('max', 'min')


@dataclasses.dataclass
class EarlyStopping:
  """Stops after `patience` consecutive epochs without improvement.

  An improvement is a value strictly better than the best so far by more
  than `min_delta`; ties keep the earlier epoch. NaN never improves.

  Attributes:
    patience: epochs without improvement that end training (>= 1).
    mode: 'max' (AUC, Dice, accuracy) or 'min' (loss).
    min_delta: margin an improvement must exceed.
    best_value: best value so far (None before the first finite value).
    best_epoch: epoch of `best_value`.
    epochs_without_improvement: consecutive epochs since the best.
    improved: whether the latest `update` set a new best.
  """
  patience: int = 10
  mode: str = 'max'
  min_delta: float = 0.0
  best_value: float | None = None
  best_epoch: int | None = None
  epochs_without_improvement: int = 0
  improved: bool = False

  def __post_init__(self):
    if self.mode not in _MODES:
      raise ValueError(f'mode must be one of {_MODES}, got {self.mode!r}')
    if int(self.patience) != self.patience or self.patience < 1:
      raise ValueError(f'patience must be an integer >= 1, got '
                       f'{self.patience!r}')
    if self.min_delta < 0:
      raise ValueError(f'min_delta must be >= 0, got {self.min_delta}')

  def _is_better(self, value: float) -> bool:
    if math.isnan(value):
      return False
    if self.best_value is None:
      return True
    if self.mode == 'max':
      return value > self.best_value + self.min_delta
    return value < self.best_value - self.min_delta

  def update(self, epoch: int, value: float) -> bool:
    """Records the validation `value` of `epoch`; returns True to stop."""
    value = float(value)
    self.improved = self._is_better(value)
    if self.improved:
      self.best_value = value
      self.best_epoch = int(epoch)
      self.epochs_without_improvement = 0
    else:
      self.epochs_without_improvement += 1
    return self.should_stop

  @property
  def should_stop(self) -> bool:
    return self.epochs_without_improvement >= self.patience


class StopPoint(NamedTuple):
  """Where early stopping lands on a validation curve."""
  best_epoch: int | None  # None when no value was finite
  stop_epoch: int  # last epoch trained (the last one given if never stopped)


def find_stop_point(values: Sequence[float], patience: int = 10,
                    mode: str = 'max', min_delta: float = 0.0,
                    first_epoch: int = 0) -> StopPoint:
  """Replays `EarlyStopping` over per-epoch validation values.

  Args:
    values: validation metric of epochs first_epoch, first_epoch + 1, ...
    patience, mode, min_delta: as in `EarlyStopping`.
    first_epoch: number of the first epoch (0 or 1).

  Returns:
    StopPoint(best_epoch, stop_epoch); epochs after stop_epoch are ignored.
  """
  if len(values) == 0:
    raise ValueError('values is empty: no validation epochs to replay')
  stopper = EarlyStopping(patience=patience, mode=mode, min_delta=min_delta)
  epoch = first_epoch
  for epoch, value in enumerate(values, start=first_epoch):
    if stopper.update(epoch, value):
      break
  return StopPoint(best_epoch=stopper.best_epoch, stop_epoch=epoch)
