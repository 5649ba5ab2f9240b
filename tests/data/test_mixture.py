"""Weighted mixtures of prepared builds as one pretraining stream (data/mixture.py).

The two components are the session's synthetic NIH build and a folder build
of the same raw tree (named 'images/<file>', so each record tells its
component), in one data_dir.
"""
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import load_config
from mlvicx_jax import pretrained
from mlvicx_jax.data import augment
from mlvicx_jax.data import mixture
from mlvicx_jax.data import pipelines
from mlvicx_jax.data import prepare as prepare_lib
from mlvicx_jax.data import sources

SPEC = 'nih:1,folder:3'
SPLIT = 'train+validation'


@pytest.fixture(scope='module')
def data_dir(mixture_data_dir):
  return mixture_data_dir


def _names(ds, count):
  return [ds[i]['file_name'].decode() for i in range(count)]


def test_parse_canonical_and_errors_name_the_item():
  assert mixture.parse('nih') == [mixture.Component('nih', 1.0)]
  assert mixture.parse(' nih/s96 : 1 , chexpert:2.5') == [
      mixture.Component('nih/s96', 1.0), mixture.Component('chexpert', 2.5)]
  assert mixture.canonical('nih:1, chexpert:2.0') == mixture.canonical('nih,chexpert:2')
  assert mixture.canonical('nih:3') == 'nih'  # one item: today's stream, whatever its weight
  for bad, message in (('nih:0', "'nih:0': the weight must be a number > 0"),
                       ('nih:-1', 'must be a number > 0'), ('nih:x', 'must be a number'),
                       ('nih:inf', 'must be a number'), ('nih,,rsna', "empty item ''"),
                       ('nih,xray:2', "'xray:2': unknown dataset 'xray'"),
                       ('nih,nih:2', 'nih is named twice')):
    with pytest.raises(ValueError, match=message):
      mixture.parse(bad)
  from mlvicx_jax.train import config_check  # pylint: disable=g-import-not-at-top
  config = load_config('configs/nih.py', 'smoke')
  config.dataset, config.data_dir = 'nih:1,folder:0', '/somewhere'
  with pytest.raises(config_check.ConfigError, match=r"config.dataset: .*'folder:0'"):
    config_check.validate(config)
  config.dataset, config.data_dir = 'nih:1,folder:2', ''  # synthetic data: one dataset only
  with pytest.raises(config_check.ConfigError, match='config.data_dir: empty'):
    config_check.validate(config)


def test_proportions_match_the_weights_and_each_component_is_a_permutation(data_dir):
  nih = set(sources.file_names(data_dir, 'nih', 'train')) | set(
      sources.file_names(data_dir, 'nih', 'validation'))
  folder = {n for s in ('train', 'validation') for n in sources.file_names(data_dir, 'folder', s)}
  assert not nih & folder
  count = 4000
  names = _names(mixture.records(data_dir, SPEC, split=SPLIT, seed=0), count)
  from_folder = sum(n in folder for n in names)
  assert from_folder + sum(n in nih for n in names) == count
  p = 3 / 4
  sd = np.sqrt(count * p * (1 - p))  # binomial sd, 27.4 for 4000 draws
  assert abs(from_folder - p * count) <= 4 * sd, (from_folder, p * count, sd)
  # Within one epoch of a component, its images come once each, in a shuffled order.
  first_nih = [n for n in names if n in nih][:len(nih)]
  assert sorted(first_nih) == sorted(nih) and first_nih != sorted(nih)
  second_nih = [n for n in names if n in nih][len(nih):2 * len(nih)]
  assert sorted(second_nih) == sorted(nih) and second_nih != first_nih  # a new permutation
  assert mixture.num_examples(data_dir, SPEC, SPLIT) == len(nih) + len(folder)


def test_stream_is_a_pure_function_of_position_and_seed(data_dir):
  a = mixture.records(data_dir, SPEC, split=SPLIT, seed=0)
  b = mixture.records(data_dir, SPEC, split=SPLIT, seed=0)
  positions = [0, 1, 2, 3, 500, 1234, 77, 3]  # any order, repeated
  assert [a[i]['file_name'] for i in positions] == [b[i]['file_name'] for i in positions]
  np.testing.assert_array_equal(a[1234]['image'], b[1234]['image'])
  other = mixture.records(data_dir, SPEC, split=SPLIT, seed=1)
  assert _names(a, 64) != _names(other, 64)
  finite = mixture.records(data_dir, SPEC, split=SPLIT, seed=0, num_epochs=2)
  assert len(finite) == 2 * mixture.num_examples(data_dir, SPEC, SPLIT)


def _loader(data_dir, on, shard_index=0, shard_count=1, batch=8):
  aug = augment.default_augment_config()
  aug.on = on
  return pipelines.pretrain_loader(data_dir, SPEC, split=SPLIT, image_size=32,
                                   global_batch_size=batch, seed=5, aug=aug,
                                   shard_index=shard_index, shard_count=shard_count)


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize('on', ['device', 'host'])
def test_two_processes_see_the_global_batches_of_one(data_dir, on):
  """Shard p's row j of batch b is row j * 2 + p of the one-process batch b."""
  whole = _take(iter(_loader(data_dir, on)), 3)
  shards = [_take(iter(_loader(data_dir, on, p, 2)), 3) for p in range(2)]
  for b in range(3):
    for key in whole[b]:
      merged = np.empty_like(whole[b][key])
      merged[0::2], merged[1::2] = shards[0][b][key], shards[1][b][key]
      np.testing.assert_array_equal(merged, whole[b][key])
  if on == 'device':
    assert whole[2]['position'].tolist() == list(range(16, 24))


def test_resume_from_iterator_state_is_bitwise(data_dir):
  iterator = iter(_loader(data_dir, 'host'))
  _take(iterator, 3)
  state = iterator.get_state()
  expected = _take(iterator, 2)
  resumed = iter(_loader(data_dir, 'host'))
  resumed.set_state(state)
  for a, b in zip(expected, _take(resumed, 2)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_image_sizes_must_agree(data_dir, tmp_path):
  os.symlink(os.path.join(data_dir, 'nih'), tmp_path / 'nih')
  small = tmp_path / 'small'
  small.mkdir()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((40, 40), np.uint8)).save(small / 'a.png')
  prepare_lib.prepare('folder', str(small), str(tmp_path), image_size=40)
  with pytest.raises(ValueError, match=r'nih/s96 is 96 px, folder/s40 is 40 px'):
    mixture.check_prepared(str(tmp_path), 'nih,folder')
  with pytest.raises(FileNotFoundError, match='no build of .rsna.'):
    mixture.check_prepared(str(tmp_path), 'nih,rsna:2')


def test_pretraining_on_a_mixture_resumes_bitwise_and_refuses_another_mixture(data_dir, tmp_path):
  from mlvicx_jax.train import loop  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import resume  # pylint: disable=g-import-not-at-top
  config = load_config('configs/nih.py', 'smoke')
  config.dataset, config.data_dir = SPEC, data_dir
  config.num_train_steps, config.checkpoint_every_steps = 3, 2
  config.async_checkpointing = False
  straight = str(tmp_path / 'straight')
  finished = loop.pretrain(config, straight)
  # The same run stopped after its step-2 checkpoint (same schedule: 3 steps).
  workdir = str(tmp_path / 'run')
  shutil.copytree(straight, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '3'))
  config.dataset = 'nih:2,folder:3'
  with pytest.raises(resume.ConfigDriftError, match='dataset: "nih,folder:3" in checkpoint, "nih:2,folder:3" now'):
    loop.pretrain(config, workdir)
  config.dataset = ' nih , folder:3.0'  # the same mixture, written differently
  resumed = loop.pretrain(config, workdir)
  assert pretrained.load(workdir).step == 3
  # Bitwise equal to the uninterrupted steps: the stream resumed at position 2 * batch.
  assert resumed['loss'] == finished['loss']
  a, b = pretrained.load(workdir).variables, pretrained.load(straight).variables
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
