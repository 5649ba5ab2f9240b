r"""Reads every record of every prepared build, so damage shows before training.

  python -m mlvicx_jax.data.verify --data_dir=DIR [--dataset=nih|nih/s96]

A build is DIR/<dataset>/<config>/<version>/. Each shard is read with the
array_record reader, batch by batch and, where a batch fails, record by
record: a corrupted Riegeli block fails only the records stored in it
(tfds writes one record per chunk), so one bad block never hides the rest.
Record counts are checked against the build's split info, and every record
is decoded against features.json. One line per split, one `BAD` line per
problem, a summary naming the rebuild command; exit status 1 on any problem.
"""
from __future__ import annotations

import json
import os
import re
import sys

from absl import app
from absl import flags

_BATCH = 256  # Records per sequential read; a failed batch is re-read one by one.
# Config names of builders.base.build_config, folder's '_labels<hash>' and
# CheXpert's and PadChest's '_frontal', PadChest's '_physician' and '_min<N>':
# the options a rebuild must repeat.
_CONFIG = re.compile(r's(?P<size>\d+)(?:_(?P<rule>any|majority))?(?:_seed(?P<seed>\d+))?'
                     r'(?:_val(?P<val>\d+))?(?:_test(?P<test>\d+))?(?P<png>_png)?'
                     r'(?P<labels>_labels[0-9a-f]+)?(?P<frontal>_frontal)?'
                     r'(?P<physician>_physician)?(?:_min(?P<min>\d+))?$')


def find_builds(data_dir: str, dataset: str | None = None) -> list[str]:
  """Version folders (holding dataset_info.json) under data_dir, of `dataset` if given."""
  name, _, config = (dataset or '').partition('/')
  found = []
  for dirpath, dirnames, filenames in os.walk(data_dir):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))  # Staging, retired.
    parts = os.path.relpath(dirpath, data_dir).split(os.sep)
    if len(parts) == 3 and 'dataset_info.json' in filenames:
      if (not name or parts[0] == name) and (not config or parts[1] == config):
        found.append(dirpath)
    if len(parts) >= 3:
      dirnames[:] = []
  return found


def rebuild_command(build_dir: str) -> str:
  """The prepare command that rebuilds this build in place (same config, --overwrite:
  without it prepare reuses the damaged build)."""
  build_dir = os.path.abspath(build_dir)
  config_dir = os.path.dirname(build_dir)
  data_dir = os.path.dirname(os.path.dirname(config_dir))
  name, config = os.path.basename(os.path.dirname(config_dir)), os.path.basename(config_dir)
  manual_dir = 'MANUAL_DIR'
  try:
    with open(os.path.join(build_dir, 'metadata.json')) as f:
      manual_dir = json.load(f).get('manual_dir') or manual_dir
  except (OSError, ValueError):
    pass
  args = [f'--dataset={name}', f'--manual_dir={manual_dir}', f'--data_dir={data_dir}']
  match = _CONFIG.match(config)
  if match:
    m = match.groupdict()
    args.append(f'--image_size={m["size"]}')
    args += [f'--vinbig_label_rule={m["rule"]}'] if m['rule'] else []
    args += [f'--seed={m["seed"]}'] if m['seed'] else []
    args += [f'--validation_fraction={int(m["val"]) / 100:g}'] if m['val'] else []
    args += [f'--test_fraction={int(m["test"]) / 100:g}'] if m['test'] else []
    args += ['--image_encoding=png'] if m['png'] else []
    args += ['--labels_csv=LABELS_CSV'] if m['labels'] else []
    args += ['--frontal_only'] if m['frontal'] else []
    args += ['--physician_only'] if m['physician'] else []
    args += [f'--min_positives={m["min"]}'] if m['min'] else []
  return 'python -m mlvicx_jax.data.prepare ' + ' '.join(args + ['--overwrite'])


def _problem(build: str, split: str | None, shard: str | None, record: int | None,
             reason: str, **extra) -> dict:
  return {'build': build, 'split': split, 'shard': shard, 'record': record,
          'reason': reason, **extra}


def _decode_error(features, class_names: int, record: bytes) -> str | None:
  """Why a record does not decode to the build's features; None when it does."""
  try:
    example = features.deserialize_example_np(record)
  except Exception as e:  # pylint: disable=broad-except
    return f'does not decode: {type(e).__name__}: {e}'
  image, shape = example['image'], tuple(features['image'].shape)
  if getattr(image, 'shape', None) != shape:
    return f'image shape {getattr(image, "shape", None)}, features.json says {shape}'
  if len(example['label']) != class_names:
    return f'{len(example["label"])} labels, the build has {class_names} class names'
  if 'boxes' in example and (getattr(example['boxes'], 'ndim', 0) != 2
                             or example['boxes'].shape[1] != 5):
    return f'boxes of shape {example["boxes"].shape}, expected (N, 5)'
  return None


def _read_shard(path: str, expected: int, features, class_names: int, build: str,
                split: str) -> tuple[int, list[dict]]:
  """(records that read and decode, problems) of one shard file."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    return 0, [_problem(build, split, path, None,
                        f'missing ({expected} records of {split} by the metadata)')]
  try:
    reader = array_record_module.ArrayRecordReader(path)
    count = reader.num_records()
    if not reader.ok():  # Footer or index unreadable: read() says why.
      reader.read([0])
  except Exception as e:  # pylint: disable=broad-except
    return 0, [_problem(build, split, path, 0, f'{e}; none of its {expected} records '
                        'can be read (the index is unreadable)', unreadable=expected)]
  problems = []
  if count != expected:
    problems.append(_problem(build, split, path, None,
                             f'holds {count} records, the metadata says {expected}'))
  good, failed = 0, []  # failed: (index, reason).
  for start in range(0, count, _BATCH):
    end = min(start + _BATCH, count)
    try:
      batch = list(enumerate(reader.read(start, end), start))
    except Exception:  # pylint: disable=broad-except
      batch = []
      for i in range(start, end):  # The reader stays usable after a failed read.
        try:
          batch.append((i, reader.read([i])[0]))
        except Exception as e:  # pylint: disable=broad-except
          failed.append((i, f'unreadable: {e}'))
    for i, record in batch:
      error = _decode_error(features, class_names, record)
      if error:
        failed.append((i, error))
      else:
        good += 1
  reader.close()
  runs = []  # [first index, reason, length]: consecutive unreadable records are one problem.
  for i, reason in sorted(failed):
    last = runs[-1] if runs else None
    if (last and i == last[0] + last[2] and reason.startswith('unreadable')
        and last[1].startswith('unreadable')):
      last[2] += 1
    else:
      runs.append([i, reason, 1])
  for i, reason, length in runs:
    after = f' (and the {length - 1} records after it)' if length > 1 else ''
    problems.append(_problem(build, split, path, i, reason + after, unreadable=length))
  return good, problems


def verify(data_dir: str, dataset: str | None = None, report=None) -> list[dict]:
  """Problems of every build under data_dir (each a dict: build, split, shard,
  record, reason); `report(line)` gets one line per split as it is checked."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  problems = []
  for build_dir in find_builds(data_dir, dataset):
    build = os.path.relpath(build_dir, data_dir).replace(os.sep, '/')
    try:
      info = tfds.builder_from_directory(build_dir).info
      features, class_names = info.features, len(info.metadata['class_names'])
      splits = {name: info.splits[name] for name in info.splits.keys()}
    except Exception as e:  # pylint: disable=broad-except
      problems.append(_problem(build, None, build_dir, None,
                               f'cannot open the build: {type(e).__name__}: {e}',
                               build_dir=build_dir))
      if report:
        report(format_problem(problems[-1]))
      continue
    for split, split_info in splits.items():
      lengths = list(split_info.shard_lengths)
      found = []
      if sum(lengths) != split_info.num_examples:
        found.append(_problem(build, split, None, None, f'shard lengths sum to {sum(lengths)}, '
                              f'num_examples is {split_info.num_examples}'))
      good = 0
      for path, length in zip(split_info.filepaths, lengths):
        count, shard_problems = _read_shard(os.fspath(path), length, features, class_names,
                                            build, split)
        good += count
        found += shard_problems
      for p in found:
        p['build_dir'] = build_dir
      if report:
        expected = split_info.num_examples
        report(f'{build} {split}: {good} records OK' if not found and good == expected else
               f'{build} {split}: {good} of {expected} records OK, {len(found)} problem(s)')
        for p in found:
          report(format_problem(p))
      problems += found
  return problems


def format_problem(problem: dict) -> str:
  """The `BAD ...` line of a problem."""
  where = problem['shard'] or f'{problem["build_dir"]} {problem["split"]}'
  record = '' if problem['record'] is None else f' record {problem["record"]}'
  return f'BAD {where}{record}: {problem["reason"]}'


def _define_flags():
  """CLI flags, defined only when run as a program (modules share absl's FLAGS)."""
  flags.DEFINE_string('data_dir', None, 'Folder of the builds (tfds data_dir).')
  flags.DEFINE_string('dataset', None, "Only this dataset's builds: 'nih' or 'nih/s96'.")
  flags.mark_flags_as_required(['data_dir'])


def main(argv):
  del argv
  data_dir, dataset = flags.FLAGS.data_dir, flags.FLAGS.dataset
  builds = find_builds(data_dir, dataset)
  if not builds:
    which = f'of {dataset!r} ' if dataset else ''
    where = (f'{data_dir} does not exist' if not os.path.isdir(data_dir) else
             f'no build {which}under {data_dir}')
    print(f'error: verify: {where} (expected '
          f'{data_dir}/<dataset>/<config>/<version>/dataset_info.json)', file=sys.stderr)
    return 1
  try:
    problems = verify(data_dir, dataset, report=lambda line: print(line, flush=True))
  except Exception as e:  # pylint: disable=broad-except
    print(f'error: verify {data_dir}: {type(e).__name__}: {e}', file=sys.stderr)
    return 1
  if not problems:
    print(f'verified {len(builds)} build(s) under {data_dir}: all records OK')
    return 0
  bad = sorted({p['build_dir'] for p in problems})
  print(f'verified {len(builds)} build(s) under {data_dir}: {len(problems)} problem(s) in '
        f'{len(bad)} build(s); rebuild with: ' + '; '.join(rebuild_command(b) for b in bad))
  return 1


if __name__ == '__main__':
  _define_flags()
  app.run(main)
