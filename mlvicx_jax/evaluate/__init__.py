"""Downstream evaluation: one harness (`harness`), tasks (`classification`, `segmentation`),
and the transfer of classifiers across builds (`transfer`).

  from mlvicx_jax import evaluate
  records = evaluate.run(config, workdir)   # config: configs/eval/<task>.py
"""
from mlvicx_jax import vocabulary


def task_module(task: str):
  """The task module that evaluates `task` (imported lazily: it pulls in jax)."""
  from mlvicx_jax.evaluate import classification  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.evaluate import segmentation  # pylint: disable=g-import-not-at-top
  for module in (classification, segmentation):
    if task in module.TASKS:
      return module
  raise ValueError(f'config.task must be one of '
                   f'{classification.TASKS + segmentation.TASKS}, got {task!r}')


def run(config, workdir: str) -> list:
  """Every (label fraction, seed) run of an evaluation config; their validated records.

  A localisation config (`localise.reference`) also evaluates its reference
  encoder in the same workdir, named 'random init' or 'reference'. A transfer
  config (task 'transfer') returns its runs' records, then its transfer records.
  """
  if config.task == vocabulary.TRANSFER:  # configs/eval/transfer.py
    from mlvicx_jax.evaluate import transfer  # pylint: disable=g-import-not-at-top
    return transfer.run(config, workdir)
  from mlvicx_jax.evaluate import harness  # pylint: disable=g-import-not-at-top
  records = harness.run(config, workdir, task_module(config.task))
  reference = config.get('localise', {}).get('reference', '')
  if reference and reference != config.checkpoint:
    other = config.copy_and_resolve_references()
    other.checkpoint = reference
    other.name = 'random init' if reference == 'random' else 'reference'
    other.localise.reference = ''
    records += harness.run(other, workdir, task_module(config.task))
  return records
