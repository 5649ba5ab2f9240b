"""What every builder shares: config, source records, CSV reading, decoding.

A builder reads the files the user downloaded (manual_dir, in the real
layout of SPEC section 3), resizes every image once to a square grayscale
uint8 image, and writes array_record splits that `tfds.data_source` reads
without TensorFlow. Unreadable, truncated or absent images and malformed
rows are skipped, counted and listed in `skipped.json` beside the data, so
a bad file never stops a long build; a missing CSV or split file stops it
before anything is written.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import json
import multiprocessing
import os
from typing import Any, Callable, Iterator, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from mlvicx_jax.data import images as image_io
from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data import rle as rle_lib
from mlvicx_jax.data import splits as splits_lib

SKIPPED_REPORT = 'skipped.json'
# A file at the top of a manual_dir that marks its images as made by
# mlvicx_jax.synthetic: the build says so (metadata 'synthetic'), and reports
# never put its numbers beside the paper's.
SYNTHETIC_MARKER = 'SYNTHETIC'
VINBIG_LABEL_RULES = ('any', 'majority')
IMAGE_ENCODINGS = ('raw', 'png')


class MissingInputError(FileNotFoundError):
  """A required CSV, split list or folder is absent from the manual dir."""


@dataclasses.dataclass(eq=False)
class XrayConfig(tfds.core.BuilderConfig):
  """Build options; the name encodes those that change the stored data."""
  image_size: int = info_lib.DEFAULT_IMAGE_SIZE
  seed: int = 0
  label_rule: str = 'any'  # VinBig: positive if 'any' or a 'majority' of readers.
  validation_fraction: float = 0.1
  test_fraction: float = 0.2
  # 'raw': uint8 bytes, read without decoding (a 256 px PNG costs about 1 ms of
  # host CPU to decode, the raw record 0.1 ms); 'png': the 1.0.0 layout, 40% smaller.
  image_encoding: str = 'raw'


@dataclasses.dataclass
class SourceRecord:
  """One image to build: where it is and what is known from the CSVs."""
  file_name: str
  path: str | None  # None: listed in the CSV, absent on disk.
  label: np.ndarray
  patient_id: str = ''
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------
# Files of the manual dir.


def require(manual_dir: str, *names: str, kind: str = 'file') -> str:
  """Path of the first of `names` present in manual_dir; error naming it if none."""
  for name in names:
    path = os.path.join(manual_dir, name)
    if (os.path.isdir(path) if kind == 'folder' else os.path.isfile(path)):
      return path
  alternatives = ' or '.join(os.path.join(manual_dir, n) for n in names)
  raise MissingInputError(f'required {kind} not found: {alternatives}')


def read_csv(path: str, required: Sequence[str]) -> list[dict[str, str]]:
  """Rows with stripped keys/values (SIIM's header has ' EncodedPixels')."""
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.reader(f)
    try:
      header = [h.strip() for h in next(reader)]
    except StopIteration:
      raise ValueError(f'{path}: empty CSV file') from None
    missing = [c for c in required if c not in header]
    if missing:
      raise ValueError(f'{path}: missing column(s) {missing}; header is {header}')
    return [{k: (v or '').strip() for k, v in zip(header, row)}
            for row in reader if row]


def read_list(path: str) -> list[str]:
  with open(path, encoding='utf-8') as f:
    return [line.strip() for line in f if line.strip()]


def index_files(roots: Sequence[str], suffixes: Sequence[str],
                 recursive: bool = False) -> dict[str, str]:
  """Maps file names (and stems) found under `roots` to their paths."""
  index = {}
  for root in roots:
    walker = (os.walk(root) if recursive else
              [(root, [], os.listdir(root))] if os.path.isdir(root) else [])
    for directory, _, files in walker:
      for name in files:
        if name.lower().endswith(tuple(suffixes)):
          path = os.path.join(directory, name)
          index.setdefault(name, path)
          index.setdefault(os.path.splitext(name)[0], path)
  return index


# ----------------------------------------------------------------------------
# Decoding one image (runs in worker processes, so module-level and picklable).


@dataclasses.dataclass
class _Task:
  path: str
  image_size: int
  rle_rows: tuple[str, ...] | None = None  # SIIM: rows to union into a mask.
  image_encoding: str = 'raw'
  # A dataset's own reader, path -> (uint8 (H, W), facts about the source file);
  # module-level, so that worker processes can unpickle it. None: images.py's.
  reader: Callable[[str], tuple[np.ndarray, dict]] | None = None


def _decode(task: _Task) -> tuple[str, Any]:
  """('ok', fields) or ('skip', reason); never raises, so one bad file is skipped."""
  source = {}
  try:
    if task.reader is not None:
      (pixels, source), patient_id = task.reader(task.path), ''
    elif task.path.lower().endswith(image_io.DICOM_SUFFIXES):
      pixels, ds = image_io.read_dicom(task.path)
      patient_id = str(ds.get('PatientID', '') or '')
    else:
      pixels, patient_id = image_io.read_image(task.path), ''
  except Exception as e:  # pylint: disable=broad-except
    return 'skip', f'unreadable image: {type(e).__name__}: {e}'
  image = image_io.resize(pixels, task.image_size)
  fields = {'image': image[..., None] if task.image_encoding == 'raw' else
                     image_io.encode_png(image),
            'dicom_patient_id': patient_id,
            'original_size': pixels.shape,  # (height, width) before resizing.
            'source': source}
  if task.rle_rows is not None:
    height, width = pixels.shape
    mask = np.zeros((height, width), np.uint8)
    for row_number, rle in enumerate(task.rle_rows):
      try:
        mask |= rle_lib.rle_decode(rle, height, width)
      except rle_lib.RLEError as e:
        return 'skip', f'malformed RLE: row {row_number + 1} of this image: {e}'
    mask = image_io.resize(mask * 255, task.image_size, nearest=True)
    fields['mask'] = image_io.encode_png(mask)
  return 'ok', fields


def build_config(default_fractions: dict[str, float], with_rule: bool,
            image_size: int = info_lib.DEFAULT_IMAGE_SIZE, seed: int = 0,
            label_rule: str = 'any', validation_fraction: float | None = None,
            test_fraction: float | None = None, image_encoding: str = 'raw') -> XrayConfig:
  """Config named 's<size>[_<rule>][_seed<k>][_val<pct>][_test<pct>][_png]'.

  The name carries every option that differs from the defaults, so builds
  with different options never share a folder.
  """
  if label_rule not in VINBIG_LABEL_RULES:
    raise ValueError(f'label_rule must be one of {VINBIG_LABEL_RULES}, got {label_rule!r}')
  validation = (default_fractions['validation'] if validation_fraction is None
                else validation_fraction)
  test = default_fractions['test'] if test_fraction is None else test_fraction
  name = f's{image_size}' + (f'_{label_rule}' if with_rule else '')
  name += f'_seed{seed}' if seed else ''
  if validation != default_fractions['validation']:
    name += f'_val{round(100 * validation)}'
  if test != default_fractions['test']:
    name += f'_test{round(100 * test)}'
  if image_encoding not in IMAGE_ENCODINGS:
    raise ValueError(f'image_encoding must be one of {IMAGE_ENCODINGS}, got {image_encoding!r}')
  name += '_png' if image_encoding == 'png' else ''
  return XrayConfig(name=name, image_size=image_size, seed=seed, label_rule=label_rule,
                    validation_fraction=validation, test_fraction=test,
                    image_encoding=image_encoding,
                    description=f'{image_size}px grayscale, split seed {seed}')


# ----------------------------------------------------------------------------
# Shared builder logic.


class XrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Manual-download chest X-ray builder writing array_record."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': "Images stored as raw uint8 (image_encoding='raw'); "
                            '1.0.0 (PNG) builds stay readable.'}
  CLASS_NAMES: tuple[str, ...] = ()
  DEFAULT_FRACTIONS = {'validation': 0.1, 'test': 0.2}
  HOMEPAGE = ''
  CITATION = ''

  def __init__(self, *, num_workers: int = 0, **kwargs):
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)
    self._num_workers = num_workers
    self._pool = None  # One pool of decoding processes for all splits.
    self._skipped: list[dict[str, str]] = []

  # --- hooks for each dataset ---

  @classmethod
  def check_manual_dir(cls, manual_dir: str) -> None:
    """Raises MissingInputError naming a required file that is absent."""
    raise NotImplementedError

  def _sources(self, manual_dir: str) -> dict[str, list[SourceRecord]]:
    raise NotImplementedError

  def _extra_features(self) -> dict[str, Any]:
    return {}

  def _extra_fields(self, record: SourceRecord, fields: dict[str, Any]) -> dict[str, Any]:
    del record, fields
    return {}

  def _image_reader(self) -> Callable[[str], tuple[np.ndarray, dict]] | None:
    """A module-level reader for this dataset's files; None: images.read_image / read_dicom."""
    return None

  # --- tfds interface ---

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    features = {
        'image': (tfds.features.Image(shape=(size, size, 1), encoding_format='png')
                  if self.builder_config.image_encoding == 'png' else
                  tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8,
                                       encoding=tfds.features.Encoding.BYTES)),
        'label': tfds.features.Tensor(shape=(len(self.CLASS_NAMES),), dtype=np.float32),
        'file_name': tfds.features.Text(),
        'patient_id': tfds.features.Text(),
        **self._extra_features(),
    }
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__doc__ or '').strip(),
        features=tfds.features.FeaturesDict(features),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(
            class_names=list(self.CLASS_NAMES),
            image_size=size,
            seed=self.builder_config.seed),
    )

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    self.check_manual_dir(manual_dir)
    self._skipped = []
    sources = self._sources(manual_dir)
    self.info.metadata['num_listed'] = {s: len(r) for s, r in sources.items()}
    self.info.metadata['synthetic'] = os.path.isfile(os.path.join(manual_dir, SYNTHETIC_MARKER))
    return {split: self._generate_examples(records, split)
            for split, records in sources.items() if records}

  def _generate_examples(self, records: list[SourceRecord], split: str) -> Iterator[Any]:
    present = []
    for record in records:
      if record.path is None:
        self._skip(record.file_name, split, 'image listed in the CSV but absent')
      else:
        present.append(record)
    tasks = [_Task(r.path, self.builder_config.image_size, r.extra.get('rle_rows'),
                   self.builder_config.image_encoding, self._image_reader())
             for r in present]
    if self._num_workers > 0 and self._pool is None:
      self._pool = multiprocessing.get_context('spawn').Pool(self._num_workers)
    results = (self._pool.imap(_decode, tasks, chunksize=8) if self._pool is not None
               else map(_decode, tasks))
    progress = tqdm.tqdm(zip(present, results), total=len(present),
                         desc=f'{self.name} {split}', unit='img')
    for record, (status, fields) in progress:
      if status == 'skip':
        self._skip(record.file_name, split, fields)
        continue
      example = {
          'image': fields['image'],
          'label': record.label.astype(np.float32),
          'file_name': record.file_name,
          'patient_id': record.patient_id or fields['dicom_patient_id'],
          **self._extra_fields(record, fields),
      }
      yield record.file_name, example

  def _download_and_prepare(self, dl_manager, download_config=None):
    try:
      super()._download_and_prepare(dl_manager, download_config=download_config)
    finally:
      if self._pool is not None:
        self._pool.terminate()
        self._pool = None
    # Still inside tfds's incomplete dir: the report moves in with the data.
    counts = collections.Counter(s['reason'].split(':')[0] for s in self._skipped)
    report = {'num_skipped': len(self._skipped), 'by_reason': dict(counts),
              'skipped': self._skipped}
    (epath.Path(self.data_dir) / SKIPPED_REPORT).write_text(json.dumps(report, indent=1))
    self.info.metadata['num_skipped'] = len(self._skipped)

  def _skip(self, file_name: str, split: str, reason: str) -> None:
    self._skipped.append({'file_name': file_name, 'split': split, 'reason': reason})

  def _fractions(self) -> dict[str, float]:
    config = self.builder_config
    return {'test': config.test_fraction, 'validation': config.validation_fraction}

  def _split_by_image(self, records: list[SourceRecord],
                      fractions: dict[str, float] | None = None,
                      group=lambda record: record.file_name) -> dict[str, list[SourceRecord]]:
    """Seeded split by file name (these datasets have one image per patient or no
    ids), or by `group(record)` (a patient id) so that a group stays together."""
    fractions = self._fractions() if fractions is None else fractions
    assignment = splits_lib.assign_groups(
        [group(r) for r in records], fractions, self.builder_config.seed)
    out = {'train': [], 'validation': [], 'test': []}
    for record in records:
      out[assignment[group(record)]].append(record)
    return out
