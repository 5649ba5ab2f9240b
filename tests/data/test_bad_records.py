"""A damaged shard stops pretraining with one line naming the record, or is skipped."""
import json
import os
import re
import shutil
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest

from conftest import REPO
from conftest import load_config
from mlvicx_jax import pretrained
from mlvicx_jax.data import mixture
from mlvicx_jax.data import sources
from mlvicx_jax.data import verify


class _Flaky:
  """A list source whose `bad` positions raise as a corrupted Riegeli block does."""

  def __init__(self, n, bad):
    self._n, self._bad = n, set(bad)

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    if i in self._bad:
      raise RuntimeError('Corrupted Riegeli/records file: block header hash mismatch')
    return {'i': i}


def _checked(bad, on_bad_record):
  return sources.CheckedSource(_Flaky(5, bad), '/d/nih/s96/1.1.0', 'train',
                               [('/d/a', 0, 3), ('/d/b', 1, 2)], on_bad_record)


def test_locate_maps_positions_to_shard_and_record():
  source = _checked((), 'stop')
  assert [source.locate(i) for i in range(5)] == [
      ('/d/a', 0), ('/d/a', 1), ('/d/a', 2), ('/d/b', 1), ('/d/b', 2)]
  with pytest.raises(IndexError):
    source.locate(5)


def test_stop_names_shard_record_and_rebuild_command():
  with pytest.raises(sources.BadRecordError) as e:
    _checked({3}, 'stop')[3]
  message = str(e.value)
  assert 'record 1 of /d/b' in message and '(train record 3)' in message
  assert 'python -m mlvicx_jax.data.prepare --dataset=nih' in message
  assert '\n' not in message


def test_skip_reads_the_next_good_record_and_counts_it():
  before = sources.skipped_records()
  source = _checked({3, 4}, 'skip')
  field = sources.SKIPPED_FIELD  # each record says how many bad ones it stands in for
  assert source[3] == {'i': 0, field: 2} and source[4] == {'i': 0, field: 1}  # wraps around
  assert source[2] == {'i': 2, field: 0}
  assert _checked((), 'stop')[2] == {'i': 2}
  assert sources.skipped_records() == before + 2
  with pytest.raises(sources.BadRecordError):
    _checked(range(5), 'skip')[0]
  with pytest.raises(ValueError):
    _checked((), 'ignore')


@pytest.fixture(scope='module')
def damaged(nih_data_dir, tmp_path_factory):
  """A copy of the session's NIH build with 2,000 bytes flipped mid train shard: (dir, problem)."""
  data_dir = str(tmp_path_factory.mktemp('damaged') / 'tfds')
  shutil.copytree(nih_data_dir, data_dir)
  build = verify.find_builds(data_dir, 'nih')[0]
  shard = next(os.path.join(build, f) for f in os.listdir(build) if '-train.array_record' in f)
  size = os.path.getsize(shard)
  with open(shard, 'r+b') as f:
    f.seek(size // 2)
    data = f.read(2000)
    f.seek(size // 2)
    f.write(bytes(b ^ 0xFF for b in data))
  problems = verify.verify(data_dir, 'nih')
  assert len(problems) == 1 and problems[0]['shard'] == shard, problems
  return data_dir, problems[0]


def _damaged_range(problem) -> range:
  """The records verify found unreadable: the flipped bytes may span two of them, and the
  shuffled stream may meet either first."""
  return range(problem['record'], problem['record'] + problem.get('unreadable', 1))


def _named_record(text: str, problem) -> int:
  match = re.search(rf'record (\d+) of {re.escape(problem["shard"])}', text)
  assert match, text[-4000:]
  return int(match.group(1))


def _run(workdir, data_dir, *overrides):
  return subprocess.run(
      [sys.executable, '-m', 'mlvicx_jax.main', '--config=configs/nih.py:smoke',
       f'--workdir={workdir}', f'--config.data_dir={data_dir}', '--config.num_train_steps=4',
       *overrides],
      cwd=REPO, capture_output=True, text=True, check=False,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_bad_record_stops_with_one_line(damaged, tmp_path):
  data_dir, problem = damaged
  out = _run(tmp_path / 'w', data_dir)
  output = out.stdout + out.stderr
  assert out.returncode == 1, output[-4000:]
  errors = [line for line in output.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, output[-4000:]
  assert _named_record(errors[0], problem) in _damaged_range(problem)
  assert 'python -m mlvicx_jax.data.prepare' in errors[0]
  assert 'Traceback' not in output


def _expected_skips(data_dir, problem, steps):
  """Bad records the first `steps` global batches replace, from grain's own shuffle of
  the split (one train shard: a shard record is a split index)."""
  config = load_config('configs/nih.py', 'smoke')
  build = verify.find_builds(data_dir, 'nih')[0]
  assert len([f for f in os.listdir(build) if '-train.array_record' in f]) == 1
  n = sources.num_examples(data_dir, 'nih', 'train')
  order = grain.MapDataset.range(n).shuffle(seed=config.seed).repeat()
  bad = _damaged_range(problem)
  return sum(bad.stop - i for i in order[:steps * config.global_batch_size] if i in bad)


def test_skip_trains_past_the_bad_record_deterministically(damaged, tmp_path):
  data_dir, problem = damaged
  runs = []
  for name, workers in (('a', 0), ('b', 2)):  # records read here, or by grain worker processes
    out = _run(tmp_path / name, data_dir, '--config.on_bad_record=skip',
               f'--config.worker_count={workers}')
    output = out.stdout + out.stderr
    assert out.returncode == 0, output[-4000:]
    assert 'skipping bad record' in output
    assert _named_record(output, problem) in _damaged_range(problem)
    with open(tmp_path / name / 'metrics.jsonl') as f:
      logged = [json.loads(line)['data/bad_records_skipped'] for line in f]
    assert len(logged) == 4 and sum(logged) == _expected_skips(data_dir, problem, 4) > 0
    runs.append(pretrained.load(str(tmp_path / name)))
  assert runs[0].step == runs[1].step == 4
  for x, y in zip(jax.tree.leaves(runs[0].variables), jax.tree.leaves(runs[1].variables)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_mixture_stops_or_skips_within_the_damaged_build(damaged, mixture_data_dir, tmp_path):
  data_dir, problem = damaged
  for name, source in (('nih', data_dir), ('folder', mixture_data_dir)):
    os.symlink(os.path.join(source, name), tmp_path / name)
  stream = lambda policy: mixture.records(str(tmp_path), 'nih:1,folder:1', split='train',
                                          seed=0, num_epochs=1, on_bad_record=policy)
  with pytest.raises(sources.BadRecordError, match=re.escape(os.path.basename(problem['shard']))):
    for _ in stream('stop'):
      pass
  counts = [record[sources.SKIPPED_FIELD] for record in stream('skip')]
  bad = _damaged_range(problem)
  assert len(counts) == len(stream('stop'))
  assert 0 < sum(counts) and max(counts) <= len(bad)
