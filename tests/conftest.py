"""Shared pytest set-up and the session's expensive fixtures.

grain worker processes need absl flags parsed (google/grain#1355), so parse
them once here for every test process.

One synthetic NIH and one synthetic SIIM build (real layouts, through
`mlvicx_jax.data.prepare`) and one pretrained checkpoint (real pretraining
steps, so its BatchNorm statistics were gathered behind the context blocks)
are made once per session and shared.
"""
import os
import sys

from absl import flags
import pytest

if not flags.FLAGS.is_parsed():
  flags.FLAGS(sys.argv[:1], known_only=True)

# One compilation cache for the session's pretraining runs, in process and in
# subprocesses (compile_cache.resolve reads it), so the smoke step compiles once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.environ.get('TMPDIR', '/tmp'), f'mlvicx_test_cache_{os.getuid()}'))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORED_SIZE = 96  # >= 96 px: smaller maps hit XLA's slow tiny-map convolutions on CPU


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
  return tmp_path_factory.mktemp('synthetic')


@pytest.fixture(scope='session')
def nih_data_dir(synthetic_root):
  """120 synthetic NIH films built into a TFDS data_dir."""
  from mlvicx_jax import synthetic  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.data import prepare  # pylint: disable=g-import-not-at-top
  raw = str(synthetic_root / 'raw_nih')
  synthetic.generate('nih', raw, 120, seed=0, image_size=128)
  data_dir = str(synthetic_root / 'tfds')
  prepare.prepare('nih', raw, data_dir, image_size=STORED_SIZE, num_workers=0)
  return data_dir


@pytest.fixture(scope='session')
def mixture_data_dir(nih_data_dir, synthetic_root):
  """A data_dir with the shared NIH build (linked) and a folder build of the same films."""
  from mlvicx_jax.data import prepare  # pylint: disable=g-import-not-at-top
  root = synthetic_root / 'mixture'
  root.mkdir()
  os.symlink(os.path.join(nih_data_dir, 'nih'), root / 'nih')
  prepare.prepare('folder', str(synthetic_root / 'raw_nih'), str(root), image_size=STORED_SIZE)
  return str(root)


@pytest.fixture(scope='session')
def siim_data_dir(synthetic_root, nih_data_dir):
  """40 synthetic SIIM films (balanced, with RLE masks) in the same data_dir."""
  from mlvicx_jax import synthetic  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.data import prepare  # pylint: disable=g-import-not-at-top
  raw = str(synthetic_root / 'raw_siim')
  synthetic.generate('siim', raw, 40, seed=0, image_size=128)
  prepare.prepare('siim', raw, nih_data_dir, image_size=STORED_SIZE, num_workers=0)
  return nih_data_dir


@pytest.fixture(scope='session')
def padchest_data_dir(synthetic_root):
  """120 synthetic PadChest rows (release layout and quirks, 96 px) in their own data_dir.

  The default build ('padchest/s96'); the download is beside it, synthetic_root/raw_padchest.
  """
  from mlvicx_jax import synthetic  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.data import prepare  # pylint: disable=g-import-not-at-top
  raw = str(synthetic_root / 'raw_padchest')
  synthetic.generate('padchest', raw, 120, seed=0, image_size=STORED_SIZE)
  data_dir = str(synthetic_root / 'tfds_padchest')
  prepare.prepare('padchest', raw, data_dir, image_size=STORED_SIZE, num_workers=0)
  return data_dir


def load_config(relative_path: str, variant: str = ''):
  """A config file's get_config(variant), loaded as the absl config flag would."""
  from mlvicx_jax import config_files  # pylint: disable=g-import-not-at-top
  return config_files.load(relative_path, variant)


@pytest.fixture(scope='session')
def pretrained_dir(synthetic_root, nih_data_dir):
  """configs/nih.py:smoke pretrained for 6 real steps on the shared NIH build."""
  from mlvicx_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = load_config('configs/nih.py', 'smoke')
  config.data_dir = nih_data_dir
  config.num_train_steps = 6
  config.checkpoint_every_steps = 6
  config.async_checkpointing = False
  workdir = str(synthetic_root / 'pretrained')
  loop.pretrain(config, workdir)
  return workdir
