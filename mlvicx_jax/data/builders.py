"""TFDS builders for NIH ChestX-ray14, VinDr-CXR, RSNA Pneumonia and SIIM-ACR.

Each builder reads the files the user downloaded (manual_dir, in the real
layout of SPEC section 3), resizes every image once to a square grayscale
uint8 image, and writes array_record splits that `tfds.data_source` reads
without TensorFlow. Unreadable, truncated or absent images and malformed RLE
rows are skipped, counted and listed in `skipped.json` beside the data, so a
bad file never stops a long build; a missing CSV or split file stops it
before anything is written.

Run them through `python -m mlvicx_jax.data.prepare` (the `tfds build` CLI
needs TensorFlow).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import json
import multiprocessing
import os
from typing import Any, Iterator, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from mlvicx_jax.data import images as image_io
from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data import rle as rle_lib
from mlvicx_jax.data import splits as splits_lib

SKIPPED_REPORT = 'skipped.json'
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


def _require(manual_dir: str, *names: str, kind: str = 'file') -> str:
  """Path of the first of `names` present in manual_dir; error naming it if none."""
  for name in names:
    path = os.path.join(manual_dir, name)
    if (os.path.isdir(path) if kind == 'folder' else os.path.isfile(path)):
      return path
  alternatives = ' or '.join(os.path.join(manual_dir, n) for n in names)
  raise MissingInputError(f'required {kind} not found: {alternatives}')


def _read_csv(path: str, required: Sequence[str]) -> list[dict[str, str]]:
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


def _read_list(path: str) -> list[str]:
  with open(path, encoding='utf-8') as f:
    return [line.strip() for line in f if line.strip()]


def _index_files(roots: Sequence[str], suffixes: Sequence[str],
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


def _decode(task: _Task) -> tuple[str, Any]:
  """('ok', fields) or ('skip', reason); never raises, so one bad file is skipped."""
  try:
    if task.path.lower().endswith(image_io.DICOM_SUFFIXES):
      pixels, ds = image_io.read_dicom(task.path)
      patient_id = str(ds.get('PatientID', '') or '')
    else:
      pixels, patient_id = image_io.read_image(task.path), ''
  except Exception as e:  # pylint: disable=broad-except
    return 'skip', f'unreadable image: {type(e).__name__}: {e}'
  image = image_io.resize(pixels, task.image_size)
  fields = {'image': image[..., None] if task.image_encoding == 'raw' else
                     image_io.encode_png(image),
            'dicom_patient_id': patient_id}
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


def _config(default_fractions: dict[str, float], with_rule: bool,
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


class _XrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
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
                   self.builder_config.image_encoding)
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
                      fractions: dict[str, float] | None = None) -> dict[str, list[SourceRecord]]:
    """Seeded split by file name (these datasets have one image per patient or no ids)."""
    fractions = self._fractions() if fractions is None else fractions
    assignment = splits_lib.assign_groups(
        [r.file_name for r in records], fractions, self.builder_config.seed)
    out = {'train': [], 'validation': [], 'test': []}
    for record in records:
      out[assignment[record.file_name]].append(record)
    return out


def make_config(dataset: str, image_size: int = info_lib.DEFAULT_IMAGE_SIZE,
                seed: int = 0, label_rule: str = 'any',
                validation_fraction: float | None = None,
                test_fraction: float | None = None,
                image_encoding: str = 'raw') -> XrayConfig:
  """The config of a build (a predefined one when the options are defaults)."""
  builder = BUILDERS[dataset]
  config = _config(builder.DEFAULT_FRACTIONS, dataset == 'vinbig', image_size, seed,
                   label_rule, validation_fraction, test_fraction, image_encoding)
  predefined = {c.name: c for c in builder.BUILDER_CONFIGS}
  return predefined.get(config.name, config)


# ----------------------------------------------------------------------------
# NIH ChestX-ray14.

NIH_CSV = ('Data_Entry_2017.csv', 'Data_Entry_2017_v2020.csv')
NIH_TRAIN_VAL = 'train_val_list.txt'
NIH_TEST = 'test_list.txt'


class Nih(_XrayBuilder):
  """NIH ChestX-ray14: 14 findings, official test list, patient-wise validation."""

  CLASS_NAMES = info_lib.NIH_CLASSES
  DEFAULT_FRACTIONS = {'validation': 0.1, 'test': 0.0}  # Test is the official list.
  BUILDER_CONFIGS = [_config(DEFAULT_FRACTIONS, False)]
  HOMEPAGE = 'https://nihcc.app.box.com/v/ChestXray-NIHCC'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download ChestX-ray14 (NIH box or Kaggle "nih-chest-xrays/data") into
  manual_dir so that it holds Data_Entry_2017.csv, train_val_list.txt,
  test_list.txt and the PNGs under images/ or images_001/images/ ...
  images_012/images/.
  """

  @classmethod
  def check_manual_dir(cls, manual_dir):
    _require(manual_dir, *NIH_CSV)
    _require(manual_dir, NIH_TRAIN_VAL)
    _require(manual_dir, NIH_TEST)
    if not _nih_image_dirs(manual_dir):
      raise MissingInputError(
          f'required folder not found: {os.path.join(manual_dir, "images")} or '
          f'{os.path.join(manual_dir, "images_001", "images")} ...')

  def _sources(self, manual_dir):
    csv_path = _require(manual_dir, *NIH_CSV)
    rows = _read_csv(csv_path, ['Image Index', 'Finding Labels', 'Patient ID'])
    index = _index_files(_nih_image_dirs(manual_dir), ('.png',))
    class_index = {name: i for i, name in enumerate(self.CLASS_NAMES)}
    by_name = {}
    for line, row in enumerate(rows, start=2):
      label = np.zeros(len(self.CLASS_NAMES), np.float32)
      for finding in row['Finding Labels'].split('|'):
        finding = finding.strip()
        if finding == info_lib.NIH_NO_FINDING:
          continue
        if finding not in class_index:
          raise ValueError(f'{csv_path}: line {line}: unknown finding {finding!r} '
                           f'in column "Finding Labels"')
        label[class_index[finding]] = 1.0
      name = row['Image Index']
      by_name[name] = SourceRecord(name, index.get(name), label, row['Patient ID'])

    train_val = _read_list(os.path.join(manual_dir, NIH_TRAIN_VAL))
    test = _read_list(os.path.join(manual_dir, NIH_TEST))
    overlap = set(train_val) & set(test)
    if overlap:
      raise ValueError(f'{NIH_TRAIN_VAL} and {NIH_TEST} share {len(overlap)} images, '
                       f'e.g. {sorted(overlap)[:3]}')
    for list_name, names in ((NIH_TRAIN_VAL, train_val), (NIH_TEST, test)):
      for name in names:
        if name not in by_name:
          self._skip(name, list_name, f'not in {os.path.basename(csv_path)}')
    train_val = [by_name[n] for n in train_val if n in by_name]
    held_out = splits_lib.assign_groups(
        [r.patient_id for r in train_val],
        {'validation': self.builder_config.validation_fraction},
        self.builder_config.seed)
    self.info.metadata.update(
        split_rule=('test: official test_list.txt; validation: seeded patient-wise '
                    'hold-out of train_val_list.txt (patients ranked by '
                    'sha256(f"{seed}:{patient_id}")); train: the rest'),
        validation_fraction_of_patients=self.builder_config.validation_fraction)
    return {
        'train': [r for r in train_val if held_out[r.patient_id] == 'train'],
        'validation': [r for r in train_val if held_out[r.patient_id] == 'validation'],
        'test': [by_name[n] for n in test if n in by_name],
    }


def _nih_image_dirs(manual_dir: str) -> list[str]:
  dirs = [os.path.join(manual_dir, 'images')]
  dirs += sorted(glob.glob(os.path.join(glob.escape(manual_dir), 'images_*', 'images')))
  return [d for d in dirs if os.path.isdir(d)]


# ----------------------------------------------------------------------------
# VinDr-CXR (VinBigData Kaggle release).

VINBIG_CSV = 'train.csv'
VINBIG_IMAGES = 'train'


class Vinbig(_XrayBuilder):
  """VinDr-CXR: 14 findings from 3 radiologists per image; split by image."""

  CLASS_NAMES = info_lib.VINBIG_CLASSES
  BUILDER_CONFIGS = [_config(_XrayBuilder.DEFAULT_FRACTIONS, True, label_rule=rule)
                     for rule in VINBIG_LABEL_RULES]
  HOMEPAGE = 'https://www.kaggle.com/c/vinbigdata-chest-xray-abnormalities-detection'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the Kaggle "vinbigdata-chest-xray-abnormalities-detection" data into
  manual_dir: train.csv and train/<image_id>.dicom (PNG conversions
  train/<image_id>.png are accepted too).
  """

  @classmethod
  def check_manual_dir(cls, manual_dir):
    _require(manual_dir, VINBIG_CSV)
    _require(manual_dir, VINBIG_IMAGES, kind='folder')

  def _extra_features(self):
    return {'votes': tfds.features.Tensor(shape=(len(self.CLASS_NAMES),), dtype=np.int32),
            'num_readers': tfds.features.Tensor(shape=(), dtype=np.int32)}

  def _extra_fields(self, record, fields):
    return {'votes': record.extra['votes'], 'num_readers': record.extra['num_readers']}

  def _sources(self, manual_dir):
    csv_path = os.path.join(manual_dir, VINBIG_CSV)
    rows = _read_csv(csv_path, ['image_id', 'class_id', 'rad_id'])
    readers = collections.defaultdict(set)
    marks = collections.defaultdict(set)  # (image_id, class_id) -> rad_ids.
    for line, row in enumerate(rows, start=2):
      try:
        class_id = int(float(row['class_id']))
      except ValueError:
        raise ValueError(f'{csv_path}: line {line}: class_id {row["class_id"]!r} '
                         'is not an integer') from None
      if not 0 <= class_id <= info_lib.VINBIG_NO_FINDING_ID:
        raise ValueError(f'{csv_path}: line {line}: class_id {class_id} out of 0..14')
      readers[row['image_id']].add(row['rad_id'])
      if class_id != info_lib.VINBIG_NO_FINDING_ID:
        marks[(row['image_id'], class_id)].add(row['rad_id'])
    index = _index_files([os.path.join(manual_dir, VINBIG_IMAGES)],
                         ('.dicom', '.dcm', '.png'))
    rule = self.builder_config.label_rule
    records = []
    for image_id in sorted(readers):
      votes = np.array([len(marks.get((image_id, c), ())) for c in
                        range(len(self.CLASS_NAMES))], np.int32)
      num_readers = len(readers[image_id])
      label = vinbig_label(votes, num_readers, rule)
      records.append(SourceRecord(image_id, index.get(image_id), label, '',
                                  {'votes': votes, 'num_readers': np.int32(num_readers)}))
    self.info.metadata.update(
        label_rule=rule,
        split_rule='seeded split by image_id (ranked by sha256(f"{seed}:{image_id}"))',
        fractions=self._fractions())
    return self._split_by_image(records)


def vinbig_label(votes: np.ndarray, num_readers: int, rule: str) -> np.ndarray:
  """Image-level label from per-finding reader votes.

  'any': some reader marked the finding; 'majority': more than half of the
  readers of that image marked it.
  """
  votes = np.asarray(votes)
  if rule == 'any':
    return (votes > 0).astype(np.float32)
  if rule == 'majority':
    return (2 * votes > num_readers).astype(np.float32)
  raise ValueError(f'unknown VinBig label rule {rule!r}; use one of {VINBIG_LABEL_RULES}')


# ----------------------------------------------------------------------------
# RSNA Pneumonia Detection.

RSNA_CSV = 'stage_2_train_labels.csv'
RSNA_IMAGES = 'stage_2_train_images'


class Rsna(_XrayBuilder):
  """RSNA Pneumonia: binary image label (any box with Target 1); split by image."""

  CLASS_NAMES = info_lib.RSNA_CLASSES
  BUILDER_CONFIGS = [_config(_XrayBuilder.DEFAULT_FRACTIONS, False)]
  HOMEPAGE = 'https://www.kaggle.com/c/rsna-pneumonia-detection-challenge'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the Kaggle "rsna-pneumonia-detection-challenge" data into manual_dir:
  stage_2_train_labels.csv and stage_2_train_images/<patientId>.dcm.
  """

  @classmethod
  def check_manual_dir(cls, manual_dir):
    _require(manual_dir, RSNA_CSV)
    _require(manual_dir, RSNA_IMAGES, kind='folder')

  def _sources(self, manual_dir):
    csv_path = os.path.join(manual_dir, RSNA_CSV)
    rows = _read_csv(csv_path, ['patientId', 'Target'])
    target = collections.defaultdict(int)
    for line, row in enumerate(rows, start=2):
      if row['Target'] not in ('0', '1'):
        raise ValueError(f'{csv_path}: line {line}: Target {row["Target"]!r} is not 0 or 1')
      target[row['patientId']] |= int(row['Target'])
    index = _index_files([os.path.join(manual_dir, RSNA_IMAGES)], ('.dcm', '.png'))
    records = [SourceRecord(pid, index.get(pid), np.array([target[pid]], np.float32), pid)
               for pid in sorted(target)]
    self.info.metadata.update(
        split_rule='seeded split by patientId (one image each; ranked by '
                   'sha256(f"{seed}:{patientId}"))',
        fractions=self._fractions())
    return self._split_by_image(records)


# ----------------------------------------------------------------------------
# SIIM-ACR Pneumothorax Segmentation.

SIIM_CSV = 'train-rle.csv'
SIIM_IMAGES = 'dicom-images-train'


class Siim(_XrayBuilder):
  """SIIM-ACR Pneumothorax: masks from RLE; balanced positives and negatives."""

  CLASS_NAMES = info_lib.SIIM_CLASSES
  DEFAULT_FRACTIONS = {'validation': 0.2, 'test': 0.1}
  BUILDER_CONFIGS = [_config(DEFAULT_FRACTIONS, False)]
  HOMEPAGE = 'https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the SIIM-ACR Pneumothorax training data into manual_dir:
  train-rle.csv and dicom-images-train/<study>/<series>/<ImageId>.dcm.
  """

  @classmethod
  def check_manual_dir(cls, manual_dir):
    _require(manual_dir, SIIM_CSV)
    _require(manual_dir, SIIM_IMAGES, kind='folder')

  def _extra_features(self):
    size = self.builder_config.image_size
    return {'mask': tfds.features.Image(shape=(size, size, 1), encoding_format='png')}

  def _extra_fields(self, record, fields):
    return {'mask': fields['mask']}

  def _sources(self, manual_dir):
    csv_path = os.path.join(manual_dir, SIIM_CSV)
    rows = _read_csv(csv_path, ['ImageId', 'EncodedPixels'])
    rle_rows = collections.defaultdict(list)
    for row in rows:
      rle_rows[row['ImageId']].append(row['EncodedPixels'])
    index = _index_files([os.path.join(manual_dir, SIIM_IMAGES)], ('.dcm',), recursive=True)
    positive = sorted(i for i, r in rle_rows.items()
                      if not all(rle_lib.is_empty_rle(x) for x in r))
    negative_pool = [i for i in rle_rows if i not in set(positive)]
    seed = self.builder_config.seed
    negative = splits_lib.rank(negative_pool, seed)[:len(positive)]
    out = {'train': [], 'validation': [], 'test': []}
    for group, value in ((positive, 1.0), (negative, 0.0)):
      records = [SourceRecord(i, index.get(i), np.array([value], np.float32), '',
                              {'rle_rows': tuple(rle_rows[i])}) for i in sorted(group)]
      for split, part in self._split_by_image(records).items():
        out[split] += part
    self.info.metadata.update(
        split_rule=('all positive images and as many negatives (the first of the '
                    'seeded ranking sha256(f"{seed}:{ImageId}")), each class split '
                    'by the same ranking into test/validation/train'),
        fractions=self._fractions(),
        num_positive=len(positive), num_negative_available=len(negative_pool))
    return out


BUILDERS = {'nih': Nih, 'vinbig': Vinbig, 'rsna': Rsna, 'siim': Siim}
