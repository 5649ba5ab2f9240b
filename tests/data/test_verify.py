"""mlvicx_jax.data.verify on a real synthetic NIH build: clean, flipped bytes,
a missing shard, a record that does not decode, an empty folder, --dataset."""
import os
import shutil
import subprocess
import sys

from array_record.python import array_record_module
import pytest

from mlvicx_jax import synthetic
from mlvicx_jax.data import prepare
from mlvicx_jax.data import sources
from mlvicx_jax.data import verify

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPLITS = ('train', 'validation', 'test')


def shard(data_dir, split, config='s96'):
  return os.path.join(data_dir, 'nih', config, '1.1.0', f'nih-{split}.array_record-00000-of-00001')


def run_cli(*args):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'mlvicx_jax.data.verify', *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300, check=False)


def copy_build(clean, tmp_path):
  out = str(tmp_path / 'data')
  shutil.copytree(clean, out)
  return out


@pytest.fixture(scope='module')
def raw(tmp_path_factory):
  raw = str(tmp_path_factory.mktemp('verify_raw'))
  synthetic.generate('nih', raw, 40, seed=0, image_size=96)
  return raw


@pytest.fixture(scope='module')
def clean(raw, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('verify_clean'))
  prepare.prepare('nih', raw, out, image_size=96)
  return out


def test_clean_build_has_no_problems_and_cli_counts_match_tfds(clean):
  assert verify.verify(clean) == []
  result = run_cli(f'--data_dir={clean}')
  assert result.returncode == 0, result.stdout + result.stderr
  for split in SPLITS:
    source = sources.data_source(clean, 'nih', split)
    count = len([source[i] for i in range(len(source))])
    assert count > 0
    assert f'nih/s96/1.1.0 {split}: {count} records OK' in result.stdout.splitlines()
  assert 'BAD' not in result.stdout


def test_flipped_bytes_name_the_shard_and_a_record(clean, tmp_path):
  data = copy_build(clean, tmp_path)
  path = shard(data, 'train')
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(size // 2 - 1000)
    block = f.read(2000)
    f.seek(size // 2 - 1000)
    f.write(bytes(b ^ 0xFF for b in block))
  count = len(sources.data_source(clean, 'nih', 'train'))
  problems = verify.verify(data)
  assert problems and {p['shard'] for p in problems} == {path}
  first = min(p['record'] for p in problems)
  assert 0 <= first < count
  source = sources.data_source(data, 'nih', 'train')
  for i in range(first):  # Records before the damage still read through tfds.
    assert source[i]['image'].shape == (96, 96, 1)

  result = run_cli(f'--data_dir={data}')
  assert result.returncode == 1
  assert f'BAD {path} record {first}: ' in result.stdout
  assert 'Traceback' not in result.stdout + result.stderr
  assert f'nih/s96/1.1.0 validation: {len(sources.data_source(clean, "nih", "validation"))} ' \
      'records OK' in result.stdout  # Later splits are still checked.
  assert '--dataset=nih' in result.stdout and '--image_size=96' in result.stdout


def test_missing_shard_is_named(clean, tmp_path):
  data = copy_build(clean, tmp_path)
  os.remove(shard(data, 'test'))
  problems = verify.verify(data)
  assert [p['shard'] for p in problems] == [shard(data, 'test')]
  result = run_cli(f'--data_dir={data}')
  assert result.returncode == 1
  assert f'BAD {shard(data, "test")}: missing' in result.stdout
  assert 'Traceback' not in result.stderr


def test_truncated_shard_reports_every_record_unreadable(clean, tmp_path):
  data = copy_build(clean, tmp_path)
  os.truncate(shard(data, 'train'), os.path.getsize(shard(data, 'train')) // 3)
  (problem,) = verify.verify(data)
  assert problem['record'] == 0
  assert problem['unreadable'] == len(sources.data_source(clean, 'nih', 'train'))


def test_record_that_does_not_decode(clean, tmp_path):
  data = copy_build(clean, tmp_path)
  path = shard(data, 'validation')
  reader = array_record_module.ArrayRecordReader(path)
  records = reader.read(0, reader.num_records())
  reader.close()
  records[1] = b'not an example'
  writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
  for record in records:
    writer.write(record)
  writer.close()
  (problem,) = verify.verify(data)
  assert (problem['shard'], problem['record']) == (path, 1)
  assert 'does not decode' in problem['reason']


def test_empty_dir_is_one_line(tmp_path):
  result = run_cli(f'--data_dir={tmp_path}')
  assert result.returncode == 1 and not result.stdout.strip()
  assert result.stderr.strip().splitlines() == [f'error: verify: no build under {tmp_path} '
                                                f'(expected {tmp_path}/<dataset>/<config>/'
                                                '<version>/dataset_info.json)']
  assert verify.verify(str(tmp_path)) == []


def test_dataset_filter(raw, clean, tmp_path):
  data = copy_build(clean, tmp_path)
  prepare.prepare('nih', raw, data, image_size=64)
  os.remove(shard(data, 'test', 's64'))
  assert verify.verify(data, 'nih/s96') == []
  assert {p['build'] for p in verify.verify(data, 'nih')} == {'nih/s64/1.1.0'}
  result = run_cli(f'--data_dir={data}', '--dataset=nih/s96')
  assert result.returncode == 0 and 's64' not in result.stdout
  result = run_cli(f'--data_dir={data}', '--dataset=nih')
  assert result.returncode == 1 and 'BAD' in result.stdout
  assert 'nih/s96/1.1.0 train' in result.stdout
  assert '--image_size=64' in result.stdout
  result = run_cli(f'--data_dir={data}', '--dataset=siim')
  assert result.returncode == 1 and result.stderr.startswith("error: verify: no build of 'siim'")
  assert len(result.stderr.strip().splitlines()) == 1


def test_rebuild_command_repeats_the_config(tmp_path):
  build = tmp_path / 'vinbig' / 's128_majority_seed3_val15_png' / '1.1.0'
  assert verify.rebuild_command(str(build)) == (
      'python -m mlvicx_jax.data.prepare --dataset=vinbig --manual_dir=MANUAL_DIR '
      f'--data_dir={tmp_path} --image_size=128 --vinbig_label_rule=majority --seed=3 '
      '--validation_fraction=0.15 --image_encoding=png --overwrite')


def test_rebuild_command_repeats_padchest_options(tmp_path):
  build = tmp_path / 'padchest' / 's96_frontal_physician_min50' / '1.1.0'
  assert verify.rebuild_command(str(build)) == (
      'python -m mlvicx_jax.data.prepare --dataset=padchest --manual_dir=MANUAL_DIR '
      f'--data_dir={tmp_path} --image_size=96 --frontal_only --physician_only '
      '--min_positives=50 --overwrite')
