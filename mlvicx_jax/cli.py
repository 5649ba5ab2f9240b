"""What the programs share: library logs kept quiet, the user's errors as one line."""
import sys

from absl import logging


class QuietLibraries:
  """Keeps Orbax/grain/TFDS INFO lines out of the console (warnings still show),
  so the progress bar and the program's own messages stay readable."""
  _NOISY = ('/orbax/', '/grain/', '/tensorflow_datasets/', '/etils/')

  def filter(self, record) -> bool:
    return record.levelno >= 30 or not any(n in record.pathname for n in self._NOISY)


def quiet_libraries() -> None:
  logging.get_absl_handler().addFilter(QuietLibraries())


def pretraining_errors() -> tuple:
  """Errors of a pretraining run that are the user's to fix: one message, no traceback."""
  from mlvicx_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.data import sources  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import config_check  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import loop  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import resume  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import workdir_lock  # pylint: disable=g-import-not-at-top
  return (config_check.ConfigError, resume.ConfigDriftError, resume.RestoreError,
          workdir_lock.WorkdirLockedError, checkpoint.CheckpointError, checkpoint.SaveError,
          loop.NonFiniteLossError, sources.BadRecordError, FileNotFoundError)


def exit_on_user_errors(main, errors):
  """main(argv), with `errors()` printed as one line and exit status 1."""
  def wrapped(argv):
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      if not isinstance(e, errors()):
        raise
      logging.flush()
      print(f'error: {e}', file=sys.stderr, flush=True)
      sys.exit(1)
  return wrapped
