"""The MLVICX paper's result tables, as printed (one place for these facts).

Transcribed from ../shared/paper_results.md (MLVICX, IEEE JBHI 2024,
arXiv 2403.11504) so reports can put reproduced numbers beside published
ones. Each table keeps the paper's row layout to make checking against the
paper easy; use the accessors rather than the dicts.

Tasks and protocols are spelled as in `mlvicx_jax.vocabulary`; a label
fraction is a float, 0.01 | 0.1 | 0.3 | 1.0 ('ALL').
"""

from __future__ import annotations

import math
from typing import Union

from mlvicx_jax import vocabulary

METHODS = ('Rand. Init', 'SimCLR', 'MoCov2', 'BYOL', 'SimSiam',
           'Barlow-Twins', 'VicReg', 'Inter MoCo', 'PCRLv1', 'CAiD', 'PCRLv2',
           'MLVICX')
OURS = 'MLVICX'
# This project's pretraining methods (config.method; 'random' = no pretraining)
# -> their rows in the paper's tables.
PAPER_ROWS = {'mlvicx': 'MLVICX', 'vicreg': 'VicReg', 'barlow_twins': 'Barlow-Twins',
              'simclr': 'SimCLR', 'moco_v2': 'MoCov2', 'byol': 'BYOL', 'simsiam': 'SimSiam',
              'random': 'Rand. Init'}
FRACTIONS = (0.01, 0.1, 0.3, 1.0)

TASK_TITLES = {'nih': 'NIH ChestX-ray14', 'vinbig': 'VinBig-CXR',
               'rsna': 'RSNA Pneumonia', 'siim': 'SIIM-ACR Pneumothorax',
               'chexpert': 'CheXpert', 'padchest': 'PadChest'}
# The tasks of Tables I-III; the others (CheXpert, PadChest) have no paper numbers.
PAPER_TASKS = ('nih', 'vinbig', 'rsna', 'siim')
PROTOCOL_TITLES = {'frozen': 'frozen (linear probe)', 'finetune': 'fine-tune'}
PROTOCOL_SHORT = {'frozen': 'frozen', 'finetune': 'fine-tune'}

# Table I: NIH ChestX-ray14, fine-tune, mean AUC over 14 classes.
# method: (1%, 10%, 30%, 100%)
TABLE_I = {
    'Rand. Init': (0.577, 0.656, 0.707, 0.741),
    'SimCLR': (0.621, 0.689, 0.722, 0.756),
    'MoCov2': (0.602, 0.684, 0.719, 0.751),
    'BYOL': (0.610, 0.677, 0.716, 0.748),
    'SimSiam': (0.603, 0.668, 0.713, 0.744),
    'Barlow-Twins': (0.614, 0.718, 0.719, 0.749),
    'VicReg': (0.600, 0.684, 0.718, 0.754),
    'Inter MoCo': (0.601, 0.696, 0.727, 0.765),
    'PCRLv1': (0.617, 0.682, 0.716, 0.758),
    'CAiD': (0.594, 0.653, 0.728, 0.774),
    'PCRLv2': (0.630, 0.720, 0.731, 0.761),
    'MLVICX': (0.642, 0.733, 0.763, 0.790),
}

# Table II: mean AUC (NIH, VinBig-CXR) and accuracy (RSNA).
# (task, protocol, fraction): values in METHODS order.
TABLE_II = {
    ('nih', 'frozen', 0.01): (0.516, 0.569, 0.561, 0.547, 0.539, 0.584, 0.587,
                              0.524, 0.566, 0.567, 0.579, 0.601),
    ('nih', 'frozen', 0.1): (0.571, 0.627, 0.621, 0.617, 0.611, 0.642, 0.627,
                             0.659, 0.620, 0.654, 0.643, 0.661),
    ('nih', 'frozen', 0.3): (0.611, 0.676, 0.669, 0.663, 0.659, 0.660, 0.662,
                             0.689, 0.655, 0.683, 0.675, 0.691),
    ('nih', 'frozen', 1.0): (0.618, 0.700, 0.689, 0.690, 0.688, 0.680, 0.673,
                             0.703, 0.672, 0.705, 0.691, 0.710),
    ('vinbig', 'frozen', 0.01): (0.568, 0.683, 0.643, 0.656, 0.650, 0.661,
                                 0.653, 0.686, 0.695, 0.698, 0.598, 0.709),
    ('vinbig', 'frozen', 0.1): (0.594, 0.774, 0.736, 0.778, 0.775, 0.787,
                                0.765, 0.804, 0.772, 0.781, 0.719, 0.793),
    ('vinbig', 'frozen', 0.3): (0.670, 0.826, 0.813, 0.821, 0.816, 0.827,
                                0.814, 0.829, 0.814, 0.824, 0.790, 0.832),
    ('vinbig', 'frozen', 1.0): (0.711, 0.853, 0.855, 0.840, 0.841, 0.844,
                                0.832, 0.859, 0.850, 0.853, 0.851, 0.861),
    ('rsna', 'frozen', 0.01): (0.757, 0.769, 0.768, 0.765, 0.762, 0.780, 0.767,
                               0.769, 0.768, 0.790, 0.768, 0.783),
    ('rsna', 'frozen', 0.1): (0.768, 0.805, 0.801, 0.784, 0.778, 0.808, 0.804,
                              0.812, 0.805, 0.810, 0.803, 0.812),
    ('rsna', 'frozen', 0.3): (0.770, 0.814, 0.808, 0.801, 0.798, 0.811, 0.809,
                              0.815, 0.802, 0.814, 0.805, 0.819),
    ('rsna', 'frozen', 1.0): (0.782, 0.818, 0.812, 0.809, 0.805, 0.817, 0.812,
                              0.820, 0.811, 0.820, 0.811, 0.820),
    ('vinbig', 'finetune', 0.01): (0.722, 0.779, 0.771, 0.762, 0.758, 0.769,
                                   0.754, 0.761, 0.776, 0.781, 0.759, 0.808),
    ('vinbig', 'finetune', 0.1): (0.847, 0.877, 0.862, 0.858, 0.859, 0.875,
                                  0.865, 0.894, 0.873, 0.891, 0.903, 0.898),
    ('vinbig', 'finetune', 0.3): (0.883, 0.899, 0.890, 0.889, 0.871, 0.903,
                                  0.890, 0.919, 0.892, 0.919, 0.916, 0.927),
    ('vinbig', 'finetune', 1.0): (0.901, 0.924, 0.920, 0.917, 0.915, 0.919,
                                  0.919, 0.930, 0.914, 0.938, 0.940, 0.948),
    ('rsna', 'finetune', 0.01): (0.770, 0.800, 0.794, 0.783, 0.781, 0.800,
                                 0.795, 0.804, 0.789, 0.810, 0.801, 0.815),
    ('rsna', 'finetune', 0.1): (0.798, 0.811, 0.813, 0.805, 0.801, 0.809,
                                0.807, 0.820, 0.799, 0.818, 0.815, 0.824),
    ('rsna', 'finetune', 0.3): (0.800, 0.818, 0.820, 0.814, 0.816, 0.820,
                                0.817, 0.828, 0.813, 0.822, 0.823, 0.832),
    ('rsna', 'finetune', 1.0): (0.810, 0.830, 0.827, 0.825, 0.821, 0.829,
                                0.827, 0.830, 0.820, 0.830, 0.829, 0.840),
}

# Table III: SIIM-ACR pneumothorax segmentation, Dice (mean, sd).
TABLE_III_COLUMNS = (('frozen', 0.3), ('frozen', 1.0), ('finetune', 0.3),
                     ('finetune', 1.0))
TABLE_III = {  # method: one (mean, sd) per TABLE_III_COLUMNS entry
    'Rand. Init': ((0.42, 0.00), (0.48, 0.01), (0.45, 0.04), (0.51, 0.01)),
    'SimCLR': ((0.44, 0.03), (0.50, 0.01), (0.46, 0.00), (0.53, 0.03)),
    'MoCov2': ((0.43, 0.02), (0.50, 0.02), (0.46, 0.01), (0.52, 0.02)),
    'BYOL': ((0.43, 0.02), (0.49, 0.01), (0.45, 0.04), (0.52, 0.01)),
    'SimSiam': ((0.43, 0.02), (0.49, 0.01), (0.45, 0.04), (0.52, 0.02)),
    'Barlow-Twins': ((0.44, 0.03), (0.48, 0.03), (0.46, 0.02), (0.54, 0.03)),
    'VicReg': ((0.43, 0.01), (0.48, 0.02), (0.46, 0.02), (0.54, 0.04)),
    'Inter MoCo': ((0.44, 0.02), (0.53, 0.01), (0.47, 0.02), (0.55, 0.01)),
    'PCRLv1': ((0.43, 0.02), (0.48, 0.01), (0.46, 0.02), (0.52, 0.00)),
    'CAiD': ((0.44, 0.02), (0.55, 0.01), (0.46, 0.01), (0.56, 0.01)),
    'PCRLv2': ((0.44, 0.01), (0.56, 0.00), (0.46, 0.04), (0.57, 0.02)),
    'MLVICX': ((0.45, 0.01), (0.57, 0.00), (0.48, 0.01), (0.59, 0.01)),
}

# Table IV: ablation on NIH, mean AUC. Variants: which losses pretrain.
ABLATIONS = ('L_L', 'L_G', 'L_G+L_L')
TABLE_IV_FRACTIONS = (0.01, 0.1, 0.3)
TABLE_IV = {  # (protocol, variant): (1%, 10%, 30%)
    ('finetune', 'L_L'): (0.637, 0.727, 0.759),
    ('finetune', 'L_G'): (0.631, 0.721, 0.751),
    ('finetune', 'L_G+L_L'): (0.642, 0.733, 0.763),
    ('frozen', 'L_L'): (0.589, 0.653, 0.681),
    ('frozen', 'L_G'): (0.581, 0.648, 0.677),
    ('frozen', 'L_G+L_L'): (0.601, 0.661, 0.691),
}

# Significance: paired t-test of MLVICX against PCRLv2 over 10 runs with
# random label subsets, fine-tune. The text does not name the data set;
# the fractions match Table I (NIH).
SIGNIFICANCE = {
    'baseline': 'PCRLv2',
    'protocol': 'finetune',
    'n_runs': 10,
    'p_values': {0.01: 6.99e-03, 0.1: 6.27e-04, 0.3: 2.42e-07},
}

TABLES = ('I', 'II', 'III', 'IV')

Setting = Union[str, tuple[str, ...]]

_ABLATION_ALIASES = {'ll': 'L_L', 'lg': 'L_G', 'lgll': 'L_G+L_L',
                     'lllg': 'L_G+L_L'}


normalize_task = vocabulary.normalize_task
normalize_protocol = vocabulary.normalize_protocol
_key = vocabulary.name_key


def normalize_method(method: str) -> str:
  for name in METHODS:
    if _key(name) == _key(method):
      return name
  raise ValueError(f'unknown method {method!r}; expected one of {METHODS}')


def normalize_fraction(fraction: Union[float, str]) -> float:
  """0.01, '1%', 'ALL', '100%' -> a FRACTIONS entry."""
  if isinstance(fraction, str):
    text = fraction.strip().lower()
    if text == 'all':
      value = 1.0
    elif text.endswith('%'):
      value = float(text[:-1]) / 100
    else:
      value = float(text)
  else:
    value = float(fraction)
  for known in FRACTIONS:
    if math.isclose(value, known, rel_tol=1e-6):
      return known
  raise ValueError(f'label fraction {fraction!r} is not one the paper reports '
                   f'({FRACTIONS})')


def format_fraction(fraction: float) -> str:
  """0.01 -> '1%', 1.0 -> '100%'."""
  return f'{100 * float(fraction):g}%'


def _split_setting(setting: Setting) -> tuple[str, ...]:
  if isinstance(setting, str):
    return tuple(setting.replace('/', ' ').split())
  return tuple(setting)


def _normalize_table(table) -> str:
  numbers = {'1': 'I', '2': 'II', '3': 'III', '4': 'IV'}
  name = str(table).strip().upper()
  if name.startswith('TABLE'):
    name = name[5:].strip()
  name = numbers.get(name, name)
  if name not in TABLES:
    raise ValueError(f'unknown table {table!r}; expected one of {TABLES}')
  return name


def _task_protocol(setting: Setting) -> tuple[str, str]:
  parts = _split_setting(setting)
  if len(parts) != 2:
    raise ValueError(f'setting {setting!r} must name a task and a protocol, '
                     "e.g. 'nih frozen' or ('vinbig', 'finetune')")
  return normalize_task(parts[0]), normalize_protocol(parts[1])


def _table_iii_cell(setting: Setting, method: str,
                    fraction) -> tuple[float, float]:
  task, protocol = _task_protocol(setting)
  column = (protocol, normalize_fraction(fraction))
  if task != 'siim' or column not in TABLE_III_COLUMNS:
    raise KeyError(f'Table III has no {task} {protocol} '
                   f'{format_fraction(column[1])} (it reports SIIM at 30% '
                   'and 100%)')
  return TABLE_III[normalize_method(method)][TABLE_III_COLUMNS.index(column)]


def paper_value(table, setting: Setting, method: str,
                fraction: Union[float, str]) -> float:
  """One number of the paper's Tables I-IV.

  Args:
    table: 'I' | 'II' | 'III' | 'IV' (or 1-4).
    setting: task and protocol, 'nih finetune' or ('nih', 'finetune')
      (Tables I-III); the protocol alone for Table IV.
    method: a METHODS name, matched ignoring case and punctuation
      ('barlow twins'); for Table IV an ABLATIONS variant ('L_G+L_L').
    fraction: 0.01, '1%', 1.0, 'ALL', ...

  Returns:
    The printed value (Table III: the mean Dice; see `paper_sd`).

  Raises:
    ValueError: an unrecognised name.
    KeyError: the table has no such cell.
  """
  table = _normalize_table(table)
  fraction = normalize_fraction(fraction)
  if table == 'I':
    task, protocol = _task_protocol(setting)
    if (task, protocol) != ('nih', 'finetune'):
      raise KeyError(f'Table I is NIH fine-tune, not {task} {protocol}')
    return TABLE_I[normalize_method(method)][FRACTIONS.index(fraction)]
  if table == 'II':
    task, protocol = _task_protocol(setting)
    row = TABLE_II.get((task, protocol, fraction))
    if row is None:
      raise KeyError(f'Table II has no {task} {protocol} '
                     f'{format_fraction(fraction)}')
    return row[METHODS.index(normalize_method(method))]
  if table == 'III':
    return _table_iii_cell(setting, method, fraction)[0]
  parts = _split_setting(setting)
  protocol = normalize_protocol(parts[-1])
  if len(parts) == 2 and normalize_task(parts[0]) != 'nih':
    raise KeyError('Table IV is an NIH ablation')
  variant = _ABLATION_ALIASES.get(_key(method))
  if variant is None:
    raise ValueError(f'unknown Table IV variant {method!r}; expected one of '
                     f'{ABLATIONS}')
  if fraction not in TABLE_IV_FRACTIONS:
    raise KeyError(f'Table IV has no {format_fraction(fraction)} column')
  return TABLE_IV[(protocol, variant)][TABLE_IV_FRACTIONS.index(fraction)]


def paper_sd(setting: Setting, method: str,
             fraction: Union[float, str]) -> float:
  """The printed standard deviation of a Table III (SIIM Dice) cell."""
  return _table_iii_cell(setting, method, fraction)[1]


def paper_row(method: str | None) -> str:
  """The paper's row for a pretraining method; MLVICX's when it is not known
  (an imported checkpoint) or the paper has no row for it."""
  return PAPER_ROWS.get(method, OURS)


def paper_table_for(task: str, protocol: str) -> str | None:
  """Which table reports `task` under `protocol`: 'I', 'II', 'III' or None (not in the paper)."""
  task, protocol = normalize_task(task), normalize_protocol(protocol)
  if task not in PAPER_TASKS:
    return None
  if task == 'siim':
    return 'III'
  if (task, protocol) == ('nih', 'finetune'):
    return 'I'
  return 'II'


def paper_reference(task: str, protocol: str, fraction: Union[float, str],
                    method: str = OURS) -> float | None:
  """The paper's number for a reproduced setting, or None if not reported.

  The number is in the metric vocabulary.TASK_METRIC[task]. Unknown task, protocol
  or method names raise ValueError; a fraction or cell the paper does not
  report gives None.
  """
  table = paper_table_for(task, protocol)
  method = normalize_method(method)
  if table is None:
    return None
  try:
    fraction = normalize_fraction(fraction)
  except ValueError:
    return None
  try:
    return paper_value(table, (task, protocol), method, fraction)
  except KeyError:
    return None


def paper_methods(task: str, protocol: str,
                  fraction: Union[float, str]) -> dict[str, float]:
  """{method: value} over METHODS for a setting ({} if not reported)."""
  values = {m: paper_reference(task, protocol, fraction, m) for m in METHODS}
  return {m: v for m, v in values.items() if v is not None}
