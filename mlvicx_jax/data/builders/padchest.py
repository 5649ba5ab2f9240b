"""PadChest (BIMCV, Hospital San Juan, Alicante): 16-bit PNGs and report-derived labels.

Layout of the release: manual_dir holds
PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv (an unnamed index
column first) and the images as <ImageDir>/<ImageID>, ImageDir being the
folder of the release's zip the image came in (0 ... 54).

Labels: the cell `Labels` is a Python list literal of the report's findings
(`['pleural effusion', ' cardiomegaly']`), spaces around entries included;
entries are stripped and matched exactly. A row lists the labels of its
study's report, so the frontal and lateral images of a study share them.
`normal` is the all-zero vector. Rows are skipped, and listed in
skipped.json with the reason, when Labels is empty or `nan` (not labelled:
no report finding was extracted; not normal), lists `exclude` or
`suboptimal study`, or lists only `unchanged` (the report says "no change
since the last film" and names nothing), and when Projection is `EXCLUDE`.

Images: one fixed rule for the whole dataset, uint8 = round(value / 65535 *
255) for 16-bit PNGs (round(value / 257): no value falls on a half), the
full 16-bit range as other readers of the release take it; 8-bit PNGs are
kept as they are (value / 255 in 8-bit units) and other modes become 8-bit
grey first. Never a per-image stretch, which would make every film span
black to white whatever its exposure. metadata `png_peaks` counts the source
images by depth and peak value, so a release whose 16-bit PNGs hold 12-bit
values (and so build into dark images) shows at once.

Options (config name suffixes): `_frontal` keeps PA, AP and AP_horizontal;
`_physician` keeps MethodLabel == Physician (the manually labelled reports,
the usual test set of published PadChest results); `_min<N>` adds every
finding with at least N positive rows among the rows the build keeps to the
stated class list. Split: seeded and patient-wise, 70 / 10 / 20 %.
"""
from __future__ import annotations

import ast
import collections
import csv
import dataclasses
import os

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mlvicx_jax.data import info as info_lib
from mlvicx_jax.data.builders import base

CSV_NAME = 'PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv'
# The stated class list (info.PADCHEST_CLASSES); the shared vocabulary reads it here.
CLASSES = info_lib.PADCHEST_CLASSES
# Labels that say something about the study, not a finding: never classes.
NON_FINDINGS = ('normal', 'exclude', 'suboptimal study', 'unchanged')
PROJECTIONS = ('PA', 'L', 'AP_horizontal', 'AP', 'COSTAL', 'EXCLUDE', 'UNK')
FRONTAL = ('PA', 'AP', 'AP_horizontal')
METHODS = ('Physician', 'RNN_model')
PEDIATRIC = 'PED'
COLUMNS = ('ImageID', 'ImageDir', 'StudyID', 'PatientID', 'Projection', 'MethodLabel',
           'Pediatric', 'Labels')
NO_LABELS = ('', 'nan', 'none')  # cell text (lower case) of an unlabelled row
SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I')
_FRACTIONS = {'validation': 0.1, 'test': 0.2}


@dataclasses.dataclass(eq=False)
class PadchestConfig(base.XrayConfig):
  frontal_only: bool = False  # keep PA, AP and AP_horizontal
  physician_only: bool = False  # keep MethodLabel == Physician
  min_positives: int = 0  # > 0: add findings with at least this many positive rows
  classes: tuple[str, ...] = CLASSES


def padchest_config(config: base.XrayConfig, frontal_only: bool = False,
                    physician_only: bool = False, min_positives: int = 0,
                    manual_dir: str = '') -> PadchestConfig:
  """`config` as a PadchestConfig named '<name>[_frontal][_physician][_min<N>]'.

  min_positives > 0 reads the CSV in manual_dir to find the class list, which
  the build must know before it reads any image.
  """
  fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(base.XrayConfig)}
  classes = CLASSES
  for on, suffix, words in ((frontal_only, '_frontal', 'frontal views only'),
                            (physician_only, '_physician', 'physician-labelled rows only')):
    if on:
      fields['name'] += suffix
      fields['description'] += f', {words}'
  if min_positives < 0:
    raise ValueError(f'min_positives must be >= 0, got {min_positives}')
  if min_positives:
    if not manual_dir:
      raise ValueError('min_positives needs the manual_dir (the class list comes from the CSV)')
    usable, _ = scan(base.require(manual_dir, CSV_NAME), frontal_only, physician_only)
    classes = CLASSES + frequent_findings(usable, min_positives)
    fields['name'] += f'_min{min_positives}'
    fields['description'] += f', findings with >= {min_positives} positives'
  return PadchestConfig(**fields, frontal_only=frontal_only, physician_only=physician_only,
                        min_positives=min_positives, classes=classes)


# ----------------------------------------------------------------------------
# The CSV.


def read_rows(path: str) -> list[tuple[int, dict[str, str]]]:
  """(line where the row starts, {column: stripped text}) for COLUMNS of each row.

  Only these columns are kept: the full CSV (reports included) is large.
  """
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.reader(f)
    header = [h.strip() for h in next(reader, [])]
    if not header:
      raise ValueError(f'{path}: empty CSV file')
    missing = [c for c in COLUMNS if c not in header]
    if missing:
      raise ValueError(f'{path}: missing column(s) {missing}; header is {header}')
    where = {c: header.index(c) for c in COLUMNS}
    rows, line = [], reader.line_num + 1
    for fields in reader:
      if any(fields):
        if len(fields) != len(header):
          raise ValueError(f'{path}: line {line}: {len(fields)} fields, the header has '
                           f'{len(header)}')
        rows.append((line, {c: fields[i].strip() for c, i in where.items()}))
      line = reader.line_num + 1
  return rows


def parse_labels(cell: str, path: str, line: int) -> list[str] | None:
  """The stripped entries of a Labels cell; None for an unlabelled row."""
  if cell.strip().lower() in NO_LABELS:
    return None
  try:
    value = ast.literal_eval(cell)
  except (ValueError, SyntaxError):
    value = None
  if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
    raise ValueError(f'{path}: line {line}: column Labels: {cell[:80]!r} is not a list '
                     "of strings such as ['pleural effusion', 'cardiomegaly']")
  entries = [v.strip() for v in value if v.strip()]
  return entries or None


def skip_reason(findings: list[str] | None, projection: str) -> str | None:
  """Why a row with these labels and projection is not usable; None when it is."""
  if projection == 'EXCLUDE':
    return 'excluded projection: Projection is EXCLUDE'
  if findings is None:
    return 'no labels: Labels is empty or nan (not labelled, not normal)'
  if 'exclude' in findings:
    return "excluded: Labels lists 'exclude'"
  if 'suboptimal study' in findings:
    return "suboptimal study: Labels lists 'suboptimal study'"
  if set(findings) == {'unchanged'}:
    return "unchanged only: Labels lists only 'unchanged', no finding"
  return None


def scan(path: str, frontal_only: bool = False, physician_only: bool = False):
  """(usable, skipped) rows of the CSV under the options.

  usable: [(line, row, findings)]; skipped: [(file name, reason)]. Rows the
  options leave out are in neither: they are not part of the build.
  """
  usable, skipped, seen = [], [], {}
  for line, row in read_rows(path):
    for column, allowed in (('Projection', PROJECTIONS), ('MethodLabel', METHODS)):
      if row[column] not in allowed:
        raise ValueError(f'{path}: line {line}: column {column}: unknown value '
                         f'{row[column]!r} (expected one of {allowed})')
    findings = parse_labels(row['Labels'], path, line)
    name = f'{row["ImageDir"]}/{row["ImageID"]}'
    if name in seen:
      skipped.append((name, f'duplicate row: line {line} repeats line {seen[name]}'))
      continue
    seen[name] = line
    if ((frontal_only and row['Projection'] not in FRONTAL) or
        (physician_only and row['MethodLabel'] != 'Physician')):
      continue
    reason = skip_reason(findings, row['Projection'])
    if reason:
      skipped.append((name, reason))
    else:
      usable.append((line, row, findings))
  return usable, skipped


def frequent_findings(usable, min_positives: int) -> tuple[str, ...]:
  """Findings outside CLASSES with >= min_positives positive rows, most frequent first."""
  counts = finding_counts(usable)
  return tuple(sorted((f for f, n in counts.items() if n >= min_positives
                       and f not in CLASSES and f not in NON_FINDINGS),
                      key=lambda f: (-counts[f], f)))


def finding_counts(usable) -> collections.Counter:
  """Rows listing each label (once per row), over the usable rows."""
  return collections.Counter(f for _, _, findings in usable for f in set(findings))


# ----------------------------------------------------------------------------
# The images (runs in worker processes: module level).


def to_uint8(values: np.ndarray, full_scale: int) -> np.ndarray:
  """round(value / full_scale * 255): one linear rule, no per-image stretch."""
  unit = np.clip(np.asarray(values, np.float64) / full_scale, 0.0, 1.0)
  return np.round(unit * 255.0).astype(np.uint8)


def read_png(path: str) -> tuple[np.ndarray, dict]:
  """(uint8 (H, W), {'bits': 16 or 8, 'peak': largest source value}); truncation raises."""
  with Image.open(path) as image:
    image.load()
    if image.mode in SIXTEEN_BIT_MODES:
      values, bits = np.asarray(image), 16
    else:
      values, bits = np.asarray(image if image.mode == 'L' else image.convert('L')), 8
  if values.ndim != 2:
    raise ValueError(f'expected a grey image, got shape {values.shape}')
  return to_uint8(values, 2 ** bits - 1), {'bits': bits, 'peak': int(values.max())}


def peak_group(source: dict) -> str:
  """'png8', or the bits a 16-bit PNG's largest value needs: 'png16_peak_le_10bit' ..."""
  if source['bits'] == 8:
    return 'png8'
  for bits in (8, 10, 12, 14):
    if source['peak'] < 2 ** bits:
      return f'png16_peak_le_{bits}bit'
  return 'png16_peak_le_16bit'


# ----------------------------------------------------------------------------


class Padchest(base.XrayBuilder):
  """PadChest: report-derived findings of 16-bit PNGs; patient-wise seeded split."""

  DEFAULT_FRACTIONS = _FRACTIONS
  BUILDER_CONFIGS = [padchest_config(base.build_config(_FRACTIONS, False), frontal, physician)
                     for frontal in (False, True) for physician in (False, True)]
  HOMEPAGE = 'https://bimcv.cipf.es/bimcv-projects/padchest/'
  CITATION = ('Bustos A, Pertusa A, Salinas JM, de la Iglesia-Vaya M. PadChest: A large chest '
              'x-ray image dataset with multi-label annotated reports. Medical Image Analysis '
              '66:101797, 2020.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Request PadChest at https://bimcv.cipf.es/bimcv-projects/padchest/, download
  {CSV_NAME} and the image zips 0.zip ... 54.zip, and unpack each zip into a
  folder of its number, so that manual_dir holds the CSV and <ImageDir>/<ImageID>.
  """

  @property
  def CLASS_NAMES(self) -> tuple[str, ...]:  # pylint: disable=invalid-name
    """The stated list, plus the frequent findings of a min_positives build."""
    return tuple(self.builder_config.classes)

  @classmethod
  def check_manual_dir(cls, manual_dir):
    base.require(manual_dir, CSV_NAME)

  def _image_reader(self):
    return read_png

  def _extra_features(self):
    return {'projection': tfds.features.Text(), 'method_label': tfds.features.Text(),
            'pediatric': tfds.features.Tensor(shape=(), dtype=np.bool_),
            'study_id': tfds.features.Text()}

  def _extra_fields(self, record, fields):
    peaks = self.info.metadata['png_peaks']
    group = peak_group(fields['source'])
    peaks[group] = peaks.get(group, 0) + 1
    return {k: record.extra[k] for k in ('projection', 'method_label', 'pediatric', 'study_id')}

  def _sources(self, manual_dir):
    config = self.builder_config
    csv_path = base.require(manual_dir, CSV_NAME)
    usable, skipped = scan(csv_path, config.frontal_only, config.physician_only)
    for name, reason in skipped:
      self._skip(name, '', reason)
    class_index = {name: k for k, name in enumerate(self.CLASS_NAMES)}
    records = []
    for _, row, findings in usable:
      label = np.zeros(len(class_index), np.float32)
      for finding in findings:
        if finding in class_index:
          label[class_index[finding]] = 1.0
      path = os.path.join(manual_dir, row['ImageDir'], row['ImageID'])
      records.append(base.SourceRecord(
          f'{row["ImageDir"]}/{row["ImageID"]}', path if os.path.isfile(path) else None,
          label, row['PatientID'],
          extra={'projection': row['Projection'], 'method_label': row['MethodLabel'],
                 'pediatric': np.bool_(row['Pediatric'] == PEDIATRIC),
                 'study_id': row['StudyID']}))
    counts = finding_counts(usable)
    self.info.metadata.update(
        split_rule=('seeded patient-wise split (patients ranked by '
                    'sha256(f"{seed}:{PatientID}")): test, then validation, the rest train'),
        fractions=self._fractions(), frontal_only=bool(config.frontal_only),
        physician_only=bool(config.physician_only), min_positives=int(config.min_positives),
        image_rule=('16-bit PNG: round(value / 65535 * 255); 8-bit PNG: value; other modes: '
                    'PIL L; one rule for every image, no per-image stretch'),
        finding_counts=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        png_peaks={})
    return self._split_by_image(records, group=lambda r: r.patient_id)

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager, download_config=download_config)
    peaks = self.info.metadata.get('png_peaks', {})
    sixteen = sum(n for g, n in peaks.items() if g != 'png8')
    dark = sum(peaks.get(f'png16_peak_le_{b}bit', 0) for b in (8, 10, 12))
    if sixteen and dark > sixteen / 2:
      logging.warning(
          '%d of %d 16-bit PNGs peak at or below 4095 (12-bit values): the fixed '
          'value / 65535 rule stores them in the lowest 16 of 256 grey levels (png_peaks in '
          'metadata.json: %s)', dark, sixteen, peaks)
