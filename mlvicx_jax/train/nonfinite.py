"""What a run does when a step's loss is not finite: stop, or roll back and go on.

config.nonfinite = 'stop' ends the run; the checkpoints hold the last good
state (a non-finite step never reaches one). 'rollback' restores the latest
checkpoint, discards the input batches of the window that led to the bad
step (resume is exact, so without the skip the same state would meet the
same batch again), may scale the learning rate for a while, and goes on,
at most config.nonfinite_max_rollbacks times.

Every rollback is a `Rollback` record kept in each later checkpoint's meta:
a resumed run reads them back, so it applies the same learning-rate scale
at the same steps and sees the stream at the same offset as a run that was
never interrupted. Every process decides from the same replicated loss, so
all take the same decision.
"""
from __future__ import annotations

import dataclasses

import numpy as np

POLICIES = ('stop', 'rollback')
META_KEY = 'nonfinite_rollbacks'


class NonFiniteLossError(FloatingPointError):
  """A non-finite loss the policy does not get past (stop, or the budget is spent)."""


class NonFiniteStep(Exception):
  """Raised inside the loop at a non-finite step; the policy decides what follows."""

  def __init__(self, step: int, term: str, value: float):
    super().__init__(f'non-finite loss at step {step}: {term} = {value}')
    self.step, self.term, self.value = step, term, value


@dataclasses.dataclass(frozen=True)
class Rollback:
  failed_step: int      # the step whose loss was not finite
  term: str             # the first non-finite term of the loss
  restored_step: int    # the checkpoint the run went back to (0 without one: the initial state)
  skipped_batches: int  # input batches discarded after restoring
  lr_scale: float       # learning-rate factor for steps [restored_step, lr_until)
  lr_until: int
  stream_offset: int    # stream position minus step from restored_step on

  def describe(self) -> str:
    scaled = (f', learning rate x{self.lr_scale:g} until step {self.lr_until}'
              if self.lr_until > self.restored_step and self.lr_scale != 1 else '')
    return (f'step {self.failed_step} ({self.term}): back to step {self.restored_step}, '
            f'skipped {self.skipped_batches} batches{scaled}')

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> 'Rollback':
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def from_meta(meta: dict | None) -> list[Rollback]:
  """The rollbacks a checkpoint's meta records (none for runs that never rolled back)."""
  return [Rollback.from_json(d) for d in (meta or {}).get(META_KEY, [])]


def to_meta(rollbacks: list[Rollback]) -> dict:
  return {META_KEY: [r.to_json() for r in rollbacks]}


def decide(config, failure: NonFiniteStep, rollbacks: list[Rollback], restored_step: int,
           restored_rollbacks: list[Rollback]) -> Rollback:
  """The rollback to `restored_step` after `failure`, or NonFiniteLossError naming why not.

  `rollbacks` are this run's so far (the budget), `restored_rollbacks` those
  the restored checkpoint records (its stream position). Skipped by default:
  the batches since the checkpoint plus the failing one.
  """
  policy = config.nonfinite
  if policy != 'rollback':
    raise NonFiniteLossError(
        f'{failure}; the last checkpoint is the last good state ({restored_step}); '
        '--config.nonfinite=rollback would restore it and train past the batches that led here')
  budget = config.nonfinite_max_rollbacks
  if len(rollbacks) >= budget:
    history = '; '.join(r.describe() for r in rollbacks) or 'none'
    raise NonFiniteLossError(
        f'{failure}; the rollback budget is spent (config.nonfinite_max_rollbacks = {budget}); '
        f'rollbacks: {history}; the last checkpoint is the last good state ({restored_step})')
  skip = config.nonfinite_skip_batches
  if skip <= 0:
    skip = failure.step - restored_step + 1
  return Rollback(failed_step=failure.step, term=failure.term, restored_step=restored_step,
                  skipped_batches=int(skip), lr_scale=float(config.nonfinite_lr_scale),
                  lr_until=restored_step + int(config.nonfinite_lr_steps),
                  stream_offset=stream_offset(restored_rollbacks) + int(skip))


def lr_scale(step: int, rollbacks: list[Rollback]) -> float:
  """The learning-rate factor of `step`: the latest rollback's whose window holds it."""
  for r in reversed(rollbacks):
    if r.restored_step <= step < r.lr_until:
      return r.lr_scale
  return 1.0


def stream_offset(rollbacks: list[Rollback]) -> int:
  """Stream position minus step after `rollbacks` (the batches skipped on the way)."""
  return rollbacks[-1].stream_offset if rollbacks else 0


def poison(config, step: int, position: int, batch: int) -> np.ndarray:
  """Per-example factors of view1 for fault injection (config.inject_nan_at_step).

  NaN at the stream position `inject_nan_at_step`, so a rollback that skips
  it gets past; with inject_nan_every_try (tests of the budget) at that
  training step instead, so every retry fails again.
  """
  at = step if config.inject_nan_every_try else position
  return np.full((batch,), np.nan if at == config.inject_nan_at_step else 1.0, np.float32)
