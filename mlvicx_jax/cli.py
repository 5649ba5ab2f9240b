"""What the programs share: library logs kept quiet, the user's errors as one line."""
import os
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
  from mlvicx_jax import storage  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.data import sources  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import config_check  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import nonfinite  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import resume  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import workdir_lock  # pylint: disable=g-import-not-at-top
  return (config_check.ConfigError, resume.ConfigDriftError, resume.RestoreError,
          workdir_lock.WorkdirLockedError, checkpoint.CheckpointError, storage.SaveError,
          nonfinite.NonFiniteLossError, sources.BadRecordError, FileNotFoundError)


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


def check_config_flag(argv=None) -> None:
  """A --config file that is missing or does not load: one `error:` line and exit 1.

  absl parses --config before main runs, and a file it cannot load ends in
  two tracebacks; this reads it first, as ml_collections' config_flags would.
  """
  from mlvicx_jax import config_files  # pylint: disable=g-import-not-at-top
  argv = sys.argv if argv is None else argv
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith('--config='):
      value = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      value = argv[i + 1]
    else:
      continue
    path, _, variant = value.partition(':')
    try:
      if not os.path.isfile(path):
        raise FileNotFoundError(f'no such file {os.path.abspath(path)}')
      config_files.load_file(path, variant)
    except Exception as e:  # pylint: disable=broad-except  (whatever the file raises)
      reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      print(f'error: --config={value}: {type(e).__name__}: {reason}', file=sys.stderr)
      sys.exit(1)
