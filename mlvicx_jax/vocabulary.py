"""Names every layer shares: datasets, evaluation tasks, protocols, metrics, methods.

The bottom of the package: it imports nothing, so the data builders, the
training loop, the evaluation harness, the run-record schema and the report
all read one spelling of each name. Facts about a name (class lists, the
paper's numbers) live with the code that owns them, not here.
"""
from __future__ import annotations

# Layouts `python -m mlvicx_jax.data.prepare` builds (SPEC section 3).
DATASETS = ('nih', 'vinbig', 'rsna', 'siim', 'chexpert', 'padchest', 'folder')

# Downstream tasks, in report order; each names the dataset it runs on.
CLASSIFICATION_TASKS = ('nih', 'vinbig', 'rsna', 'chexpert', 'padchest')
SEGMENTATION_TASKS = ('siim',)
TASKS = ('nih', 'vinbig', 'rsna', 'siim', 'chexpert', 'padchest')
# config.task of configs/eval/transfer.py: train on one build, test on others.
TRANSFER = 'transfer'

# 'frozen': a linear probe (or decoder) on the frozen encoder; 'finetune': all trains.
PROTOCOLS = ('frozen', 'finetune')

# The metric each task reports (run records' `metric_name`): the paper's for
# NIH, VinBig, RSNA and SIIM; CheXpert and PadChest are not in the paper and take
# the usual one.
TASK_METRIC = {'nih': 'mean_auc', 'vinbig': 'mean_auc', 'rsna': 'accuracy', 'siim': 'dice',
               'chexpert': 'mean_auc', 'padchest': 'mean_auc'}

# Pretraining objectives (config.method), and the name of no pretraining.
METHODS = ('mlvicx', 'vicreg', 'barlow_twins', 'simclr', 'moco_v2', 'byol', 'simsiam')
RANDOM_INIT = 'random'

_TASK_ALIASES = {
    'nih': 'nih', 'nihchestxray14': 'nih', 'chestxray14': 'nih',
    'vinbig': 'vinbig', 'vinbigcxr': 'vinbig', 'vindrcxr': 'vinbig',
    'rsna': 'rsna', 'rsnapneumonia': 'rsna',
    'siim': 'siim', 'siimacr': 'siim',
    'chexpert': 'chexpert',
    'padchest': 'padchest', 'bimcvpadchest': 'padchest',
}


def name_key(name: str) -> str:
  """Lower case without spaces or punctuation, for lenient name matching."""
  return ''.join(ch for ch in str(name).lower() if ch.isalnum())


def normalize_task(task: str) -> str:
  """'NIH ChestX-ray14', 'SIIM-ACR', 'nih' -> a TASKS entry."""
  try:
    return _TASK_ALIASES[name_key(task)]
  except KeyError:
    raise ValueError(f'unknown task {task!r}; expected one of {TASKS}') from None


def normalize_protocol(protocol: str) -> str:
  """'fine-tune', 'Frozen' -> a PROTOCOLS entry."""
  for name in PROTOCOLS:
    if name_key(protocol) == name:
      return name
  raise ValueError(f'unknown protocol {protocol!r}; expected one of {PROTOCOLS}')
