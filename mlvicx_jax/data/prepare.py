r"""Builds a dataset from the user's download into array_record files.

  python -m mlvicx_jax.data.prepare --dataset=nih --manual_dir=RAW \
      --data_dir=OUT [--image_size=256] [--vinbig_label_rule=any|majority] \
      [--image_encoding=raw|png] [--frontal_only]  (CheXpert, PadChest: frontal views only)
      [--physician_only] [--min_positives=N]  (PadChest: physician-labelled rows only;
                                               add findings with >= N positives)
      [--labels_csv=FILE]  (folder: any tree of PNG/JPEG/DICOM; labels optional)

Result: OUT/<dataset>/<config>/<version>/ with the tfds files, metadata.json
(split rule, seed, fractions, counts) and skipped.json (images skipped and
why). The build happens in OUT/.staging-*/ and is moved into place by
rename only when complete, so an interrupted or failing build, or a second
build into the same folder, never damages a finished one. An existing build
is reused unless --overwrite is given.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid

from absl import app
from absl import flags
from absl import logging
from etils import epath

from mlvicx_jax.data import builders
from mlvicx_jax.data import info as info_lib


def built_path(data_dir: str, dataset: str, config) -> epath.Path:
  """Where a finished build of (dataset, config) lives."""
  cls = builders.BUILDERS[dataset]
  return epath.Path(data_dir) / cls.name / config.name / str(cls.VERSION)


def prepare(dataset: str, manual_dir: str, data_dir: str, *,
            image_size: int = info_lib.DEFAULT_IMAGE_SIZE, seed: int = 0,
            vinbig_label_rule: str = 'any',
            validation_fraction: float | None = None,
            test_fraction: float | None = None, image_encoding: str = 'raw',
            num_workers: int = 0, overwrite: bool = False,
            frontal_only: bool = False, labels_csv: str = '',
            physician_only: bool = False, min_positives: int = 0) -> epath.Path:
  """Builds `dataset` from manual_dir into data_dir; returns the version dir."""
  if dataset not in builders.BUILDERS:
    raise ValueError(f'unknown dataset {dataset!r}; expected one of {info_lib.DATASETS}')
  if not os.path.isdir(manual_dir):
    raise builders.MissingInputError(f'manual_dir not found: {manual_dir}')
  builder_cls = builders.BUILDERS[dataset]
  builder_cls.check_manual_dir(manual_dir)  # Before anything is written.
  config = builders.make_config(
      dataset, image_size=image_size, seed=seed, label_rule=vinbig_label_rule,
      validation_fraction=validation_fraction, test_fraction=test_fraction,
      image_encoding=image_encoding, frontal_only=frontal_only, labels_csv=labels_csv,
      physician_only=physician_only, min_positives=min_positives, manual_dir=manual_dir)
  final = built_path(data_dir, dataset, config)
  if final.exists() and not overwrite:
    logging.info('Reusing the finished build %s (pass --overwrite to rebuild).', final)
    return final

  # tfds would delete an existing build before re-creating it, so build
  # elsewhere on the same file system and swap by rename at the end.
  staging = epath.Path(data_dir) / f'.staging-{uuid.uuid4().hex[:12]}'
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = builder_cls(data_dir=os.fspath(staging), config=config,
                          num_workers=num_workers)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    built = epath.Path(builder.data_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    _swap_into_place(built, final)
  finally:
    shutil.rmtree(os.fspath(staging), ignore_errors=True)
  report = final / builders.SKIPPED_REPORT
  logging.info('Built %s; skipped report: %s', final, report)
  return final


def _swap_into_place(built: epath.Path, final: epath.Path) -> None:
  """Moves a finished build to `final`, replacing an older one by renames."""
  if not final.exists():
    os.rename(built, final)
    return
  retired = final.parent / f'.old-{final.name}-{uuid.uuid4().hex[:12]}'
  os.rename(final, retired)
  try:
    os.rename(built, final)
  except OSError:
    os.rename(retired, final)  # Put the previous build back.
    raise
  shutil.rmtree(os.fspath(retired), ignore_errors=True)


def _define_flags():
  """CLI flags, defined only when run as a program (modules share absl's FLAGS)."""
  flags.DEFINE_enum('dataset', None, list(info_lib.DATASETS), 'Dataset to build.')
  flags.DEFINE_string('manual_dir', None, 'Folder with the downloaded files.')
  flags.DEFINE_string('data_dir', None, 'Output folder (tfds data_dir).')
  flags.DEFINE_integer('image_size', info_lib.DEFAULT_IMAGE_SIZE, 'Stored square image size.')
  flags.DEFINE_integer('seed', 0, 'Seed of the train/validation/test split.')
  flags.DEFINE_enum('vinbig_label_rule', 'any', list(builders.VINBIG_LABEL_RULES),
                    'VinBig: positive if any reader or a majority marked it.')
  flags.DEFINE_float('validation_fraction', None,
                     'Validation share (NIH: of train_val patients); default 0.1, SIIM 0.2.')
  flags.DEFINE_float('test_fraction', None, 'Test share (not NIH); default 0.2, SIIM 0.1.')
  flags.DEFINE_bool('frontal_only', False, 'CheXpert, PadChest: keep frontal views only '
                    "(config name suffix '_frontal').")
  flags.DEFINE_bool('physician_only', False, 'PadChest: keep the physician-labelled rows '
                    "only (MethodLabel Physician; config name suffix '_physician').")
  flags.DEFINE_integer('min_positives', 0, 'PadChest: add to the stated classes every finding '
                       "with at least this many positive rows (config name suffix '_min<N>').")
  flags.DEFINE_string('labels_csv', '', 'folder: CSV of file name (first column), 0/1 label '
                      'columns and optionally patient_id; empty: unlabelled.')
  flags.DEFINE_enum('image_encoding', 'raw', list(builders.IMAGE_ENCODINGS),
                    'raw: uint8 records, no decoding when read; png: 40% smaller files.')
  flags.DEFINE_integer('num_workers', os.cpu_count() or 1,
                       'Image decoding processes (0: in this process).')
  flags.DEFINE_bool('overwrite', False, 'Rebuild even if a build exists.')
  flags.mark_flags_as_required(['dataset', 'manual_dir', 'data_dir'])


def main(argv):
  del argv
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()  # Our own bar has a total and an ETA.
  f = flags.FLAGS
  try:
    path = prepare(
        f.dataset, f.manual_dir, f.data_dir, image_size=f.image_size, seed=f.seed,
        vinbig_label_rule=f.vinbig_label_rule, validation_fraction=f.validation_fraction,
        test_fraction=f.test_fraction, image_encoding=f.image_encoding,
        num_workers=f.num_workers, overwrite=f.overwrite, frontal_only=f.frontal_only,
        labels_csv=f.labels_csv, physician_only=f.physician_only,
        min_positives=f.min_positives)
  except (builders.MissingInputError, ValueError) as e:  # Bad input: a message, no trace.
    raise SystemExit(f'error: prepare {f.dataset}: {e}') from None
  report = path / builders.SKIPPED_REPORT
  if report.exists():
    skipped = json.loads(report.read_text())
    print(f'{path}: {skipped["num_skipped"]} images skipped {skipped["by_reason"]}; '
          f'list in {report}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
