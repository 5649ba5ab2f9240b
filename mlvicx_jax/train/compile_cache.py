"""JAX's persistent compilation cache, so a restarted or resumed run skips recompiling.

A pretraining process compiles init_state and the train step before its
first step (on the 2-core CPU, smoke config: 12.6 s and 17.7 s); a job
that is preempted and resumed, or rerun with the same shapes, compiles
exactly the same programs again. With the cache they are read back from
`config.compilation_cache_dir` ('' = $JAX_COMPILATION_CACHE_DIR if set,
else WORKDIR/compilation_cache; 'none' = off; anything else = that
directory; gs:// works through etils).

jax initialises its cache once per process, on the first compile after a
directory is set, and keeps using that directory and that decision; so
`enable` resets it (the supported `reset_cache` of
jax.experimental.compilation_cache) to make a new directory take effect in
a process that already compiled something or already used another cache.
The cache works on CPU too (jax lists cpu among its supported platforms;
entries are written there, see tests/train/test_compile_cache.py). jax's
`jax_persistent_cache_enable_xla_caches` only adds GPU caches (per-fusion
autotuning results) inside the same directory, and is left at its default.

The cache is trusted code: never point it at a directory others can write.
"""
from __future__ import annotations

import os

from absl import logging
import jax

DEFAULT_SUBDIR = 'compilation_cache'
# Programs that compile in under this are not written. The train step and
# init_state take seconds to minutes, and every program above half a second
# still saves that much per process start; below it are the dozens of eager
# ops (< 0.05 s each here), which would only add files and disk writes.
MIN_COMPILE_TIME_SECS = 0.5


def resolve(config_value: str | None, workdir: str) -> str | None:
  """The cache directory a config asks for; 'none' -> None.

  '' -> $JAX_COMPILATION_CACHE_DIR when set (one cache for a user's runs),
  else WORKDIR/compilation_cache.
  """
  value = (config_value or '').strip()
  if value.lower() == 'none':
    return None
  path = (value or os.environ.get('JAX_COMPILATION_CACHE_DIR', '')
          or os.path.join(workdir, DEFAULT_SUBDIR))
  if '://' in path:  # object store: jax reads and writes it through etils.epath
    return path
  return os.path.abspath(os.path.expanduser(path))


def _reset_cache():
  """Forget jax's once-per-process cache decision and directory."""
  try:
    from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
    reset = getattr(cc, 'reset_cache', None)
  except ImportError:
    reset = None
  if reset is None:  # not public in this jax: the private module has had it since 0.4
    try:
      from jax._src import compilation_cache as cc_private  # pylint: disable=g-import-not-at-top
      reset = getattr(cc_private, 'reset_cache', None)
    except ImportError:
      reset = None
  if reset is None:
    logging.warning('this jax has no compilation_cache.reset_cache: a cache directory set '
                    'after the first compile of this process may not take effect')
    return
  reset()


def current_dir() -> str | None:
  """The directory jax's config names now (None: no persistent cache)."""
  return jax.config.jax_compilation_cache_dir


def enable(cache_dir: str | None,
           min_compile_time_secs: float = MIN_COMPILE_TIME_SECS) -> str | None:
  """Points jax's persistent compilation cache at `cache_dir`; None turns it off.

  Returns the directory in use, or None when there is none (turned off, the
  directory cannot be created, or JAX_ENABLE_COMPILATION_CACHE=false was
  set, which is respected). Never raises over the cache: it only saves time.
  """
  previous = current_dir()
  if cache_dir is None:
    if previous:
      logging.info('Persistent compilation cache off (was %s)', previous)
      jax.config.update('jax_compilation_cache_dir', None)
      _reset_cache()
    return None
  if not jax.config.jax_enable_compilation_cache:
    logging.info('Persistent compilation cache not used: jax_enable_compilation_cache is False')
    return None
  if '://' not in cache_dir:
    try:
      os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
      logging.warning('Persistent compilation cache off: cannot create %s (%s)', cache_dir, e)
      return None
  if previous and previous != cache_dir:
    logging.info('Persistent compilation cache: replacing %s', previous)
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', float(min_compile_time_secs))
  _reset_cache()
  logging.info('Persistent compilation cache at %s (programs compiling in >= %.2f s)',
               cache_dir, min_compile_time_secs)
  return cache_dir
