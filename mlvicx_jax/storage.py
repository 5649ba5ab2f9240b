"""Storage failures of any save (checkpoints, records, reports), said in one line.

A full disk or an I/O error surfaces from Orbax as an OSError, from
tensorstore as a ValueError that carries the errno, and is logged on the way
by Orbax's threads; these helpers name the cause, warn before a save that
will not fit, and keep the fallout out of the user's terminal. No jax here:
the report uses them too.
"""
import os
import re
import shutil
import sys
from typing import Optional


class SaveError(RuntimeError):
  """A checkpoint could not be written (full disk, I/O error); older ones are intact."""


FREE_SPACE_MARGIN = 1.5
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def _causes(e: BaseException):
  while e is not None:
    yield e
    e = e.__cause__ or e.__context__


def save_failure_cause(e: BaseException) -> Optional[str]:
  """'No space left on device' etc. when `e` is a storage failure, else None.

  Orbax raises OSError for Python-level writes, and tensorstore's status as a
  ValueError ('RESOURCE_EXHAUSTED: ... [os_error_code='28']') for array writes.
  """
  for cause in _causes(e):
    if isinstance(cause, OSError):
      return cause.strerror or (os.strerror(cause.errno) if cause.errno else str(cause))
    match = _OS_ERROR_CODE.search(str(cause))
    if match:
      return os.strerror(int(match.group(1)))
    if str(cause).startswith('RESOURCE_EXHAUSTED'):
      return str(cause).splitlines()[0]
  return None


def intact_steps(root: str, failed_step: Optional[int] = None) -> list[int]:
  """Finished steps on disk (Orbax renames a step into place only when complete)."""
  if not os.path.isdir(root):
    return []
  return sorted(int(d) for d in os.listdir(root) if d.isdigit() and int(d) != failed_step)


def save_error(root: str, step: int, e: BaseException) -> SaveError:
  """The one-line report of a failed save: step, cause, what survives, how to go on."""
  steps = intact_steps(root, step)
  intact = (f'intact checkpoints: steps {", ".join(map(str, steps))} (a re-run resumes from '
            f'{steps[-1]})' if steps else 'no earlier checkpoint is intact')
  return SaveError(f'saving the checkpoint of step {step} in {root} failed: '
                   f'{save_failure_cause(e)}; {intact}; re-run the same command after '
                   'freeing space')


class QuietSaveFailures:
  """Drops Orbax's logged tracebacks of a storage failure, of the sibling threads it
  stops ('cannot schedule new futures after shutdown') and of its write tasks that
  asyncio reports as never retrieved: SaveError reports it in one line."""

  def filter(self, record) -> bool:
    from_writers = '/orbax/' in record.pathname or record.name == 'asyncio'
    if not from_writers or not record.exc_info:
      return True
    e = record.exc_info[1]
    return not (save_failure_cause(e) is not None
                or 'cannot schedule new futures after' in str(e))


def _from_a_closed_event_loop(error: BaseException) -> bool:
  return isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'


def quiet_closed_loop_callbacks() -> None:
  """After a failed async save, tensorstore's completion callbacks still call into the
  event loop Orbax closed; Python prints each RuntimeError('Event loop is closed') from
  them through sys.excepthook (and unraisablehook). They are fallout, not news: dropped."""
  if getattr(sys.excepthook, 'mlvicx_quiet', False):
    return
  previous_except, previous_unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(kind, value, tb):
    if not _from_a_closed_event_loop(value):
      previous_except(kind, value, tb)

  def unraisablehook(unraisable):
    if not _from_a_closed_event_loop(unraisable.exc_value):
      previous_unraisable(unraisable)

  excepthook.mlvicx_quiet = True
  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def quiet_save_failures() -> None:
  """Installs both: Orbax's logged tracebacks of a storage failure and the closed event
  loop's fallout are dropped, so the one SaveError line is what the user reads."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  handler = logging.get_absl_handler()
  if not any(isinstance(f, QuietSaveFailures) for f in handler.filters):
    handler.addFilter(QuietSaveFailures())
  quiet_closed_loop_callbacks()


def directory_size(path: str) -> int:
  """Bytes under `path` (0 when it does not exist)."""
  total = 0
  for dirpath, _, files in os.walk(path):
    for f in files:
      try:
        total += os.path.getsize(os.path.join(dirpath, f))
      except OSError:
        pass
  return total


def free_space_warning(root: str, last_size: int,
                       margin: float = FREE_SPACE_MARGIN) -> Optional[str]:
  """A warning when the checkpoint filesystem has less room than margin x the last save."""
  if last_size <= 0 or not os.path.isdir(root):
    return None
  free = shutil.disk_usage(root).free
  if free >= margin * last_size:
    return None
  return (f'only {free / 2**20:.1f} MB free on the checkpoint filesystem ({root}); the last '
          f'checkpoint took {last_size / 2**20:.1f} MB (want {margin:g}x that): the next save '
          'may fail for lack of space')
