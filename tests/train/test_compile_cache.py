"""The persistent compilation cache: where it goes, that it writes, that it is read back.

Every test leaves jax's cache settings as it found them (the `restore`
fixture), so later tests in the session compile as they would alone.
"""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from conftest import REPO
from mlvicx_jax.train import compile_cache

HIT = '/jax/compilation_cache/cache_hits'


@pytest.fixture(autouse=True)
def restore():
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
  saved = {name: getattr(jax.config, name) for name in names}
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  compile_cache._reset_cache()  # pylint: disable=protected-access


@pytest.fixture
def events():
  seen = []
  listener = lambda event, **kwargs: seen.append(event)
  jax.monitoring.register_event_listener(listener)
  yield seen
  jax.monitoring.unregister_event_listener(listener)


def _entries(path):
  return sorted(f for f in os.listdir(path) if f.endswith('-cache')) if os.path.isdir(path) else []


def _affine():
  """A new function object on each call: jit's in-memory caches miss, the disk one may hit."""
  def affine(x):
    return jnp.tanh(x) * 3.0 + 1.0
  return jax.jit(affine)


def test_resolve_rules(tmp_path, monkeypatch):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  workdir = str(tmp_path / 'wd')
  assert compile_cache.resolve('', workdir) == os.path.join(workdir, 'compilation_cache')
  assert compile_cache.resolve(None, workdir) == os.path.join(workdir, 'compilation_cache')
  assert compile_cache.resolve('none', workdir) is None
  assert compile_cache.resolve('None', workdir) is None
  assert compile_cache.resolve('~/jax_cache', workdir) == os.path.expanduser('~/jax_cache')
  assert compile_cache.resolve('/shared/cache', workdir) == '/shared/cache'
  assert compile_cache.resolve('gs://bucket/cache', workdir) == 'gs://bucket/cache'
  assert compile_cache.resolve('', 'gs://bucket/run') == 'gs://bucket/run/compilation_cache'
  relative = compile_cache.resolve('', 'rel_wd')
  assert os.path.isabs(relative) and relative.endswith(os.path.join('rel_wd', 'compilation_cache'))
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', '/users/cache')  # a user's one cache
  assert compile_cache.resolve('', workdir) == '/users/cache'
  assert compile_cache.resolve('/shared/cache', workdir) == '/shared/cache'


def test_writes_then_hits_in_process(tmp_path, events):
  jnp.ones(3).sum()  # this process has compiled before the cache is enabled
  cache_dir = str(tmp_path / 'cache')
  assert compile_cache.enable(cache_dir, min_compile_time_secs=0) == cache_dir
  assert compile_cache.current_dir() == cache_dir
  x = jnp.ones((7, 13))  # a shape no other test compiles
  # Count from here: the compilations above may hit the cache of $JAX_COMPILATION_CACHE_DIR,
  # which the suite shares with earlier runs on the machine.
  events.clear()
  _affine()(x).block_until_ready()
  written = _entries(cache_dir)
  assert any(f.startswith('jit_affine') for f in written), written
  assert HIT not in events
  _affine()(x).block_until_ready()  # same computation, fresh jit: read from disk
  assert events.count(HIT) == 1
  assert _entries(cache_dir) == written


def test_hit_in_a_fresh_process(tmp_path):
  """The case it exists for: a restarted job finds what the last one compiled."""
  cache_dir = str(tmp_path / 'cache')
  child = textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {REPO!r})
      import jax, jax.numpy as jnp
      from mlvicx_jax.train import compile_cache
      hits = []
      jax.monitoring.register_event_listener(
          lambda e, **k: hits.append(e) if e == {HIT!r} else None)
      compile_cache.enable({cache_dir!r}, min_compile_time_secs=0)
      jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((5, 11))).block_until_ready()
      print('HITS', len(hits))
  """)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  runs = [subprocess.run([sys.executable, '-c', child], capture_output=True, text=True,
                         env=env, timeout=120, check=True) for _ in range(2)]
  hits = [int(r.stdout.split('HITS')[-1]) for r in runs]
  assert hits[0] == 0, runs[0].stderr
  assert hits[1] >= 1, runs[1].stderr  # the function and the jnp.ones it needs


def test_switching_directory_takes_effect(tmp_path):
  first, second = str(tmp_path / 'first'), str(tmp_path / 'second')
  compile_cache.enable(first, min_compile_time_secs=0)
  _affine()(jnp.ones((3, 17))).block_until_ready()
  before = _entries(first)
  assert before
  compile_cache.enable(second, min_compile_time_secs=0)
  _affine()(jnp.ones((3, 19))).block_until_ready()
  assert _entries(first) == before  # jax alone would keep writing to the first directory
  assert any(f.startswith('jit_affine') for f in _entries(second))


def test_off_and_default_threshold(tmp_path):
  cache_dir = str(tmp_path / 'cache')
  compile_cache.enable(cache_dir, min_compile_time_secs=0)
  assert compile_cache.enable(None) is None
  assert compile_cache.current_dir() is None
  _affine()(jnp.ones((3, 23))).block_until_ready()
  assert _entries(cache_dir) == []
  # The default threshold skips programs that compile in milliseconds.
  compile_cache.enable(cache_dir)
  _affine()(jnp.ones((3, 29))).block_until_ready()
  assert _entries(cache_dir) == []
  assert jax.config.jax_persistent_cache_min_compile_time_secs == compile_cache.MIN_COMPILE_TIME_SECS


def test_uncreatable_directory_is_not_fatal(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  assert compile_cache.enable(str(blocker / 'cache')) is None


def test_a_truncated_entry_is_compiled_again_with_a_warning(tmp_path):
  """A kill -9 mid-write leaves a short file (jax writes entries in place): not fatal."""
  cache_dir = str(tmp_path / 'cache')
  compile_cache.enable(cache_dir, min_compile_time_secs=0)
  x = jnp.arange(12.0).reshape(3, 4)
  want = _affine()(x)
  for name in _entries(cache_dir):
    with open(os.path.join(cache_dir, name), 'r+b') as f:
      f.truncate(20)
  with pytest.warns(UserWarning, match='persistent compilation cache'):
    got = _affine()(x)
  assert jnp.array_equal(got, want)
