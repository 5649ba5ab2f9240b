"""The transfer record: a classifier trained on build A, scored on A's and B's test splits.

File `transfer_record_<A>_to_<B>_<protocol>_f<f>_seed<s>[_<name>].json`, written by
evaluate/transfer.py; every field of TRANSFER_SPEC is required. The classifier of A's run
(`run_record`, `model`) scored on A's and B's test splits over their shared findings
(`findings`: common name -> A's and B's class; `in_mean`: AUC defined on both splits).
`in_domain` (A) and `transferred` (B) hold n_images, mean_auc over the in_mean findings,
ci95 and per_finding {auc, ci95, positives, labelled}; `drop` = transferred - in_domain
(mean_auc, ci95, per_finding {value, ci95}), A's and B's images resampled independently
(`n_boot`, `bootstrap_seed`); `label_policy` {train, test}: each build's uncertain policy
(null: none). Predictions: 'labels', 'scores', 'file_names' (B), 'in_domain_labels',
'in_domain_scores', 'in_domain_file_names' (A), 'class_names' (common), NaN labels masked.
"""

from __future__ import annotations

from collections.abc import Mapping

from mlvicx_jax.evaluate import records

TRANSFER_PREFIX = 'transfer_record_'
TRANSFER_KIND = 'transfer'
_TRANSFER_SCORES = {'n_images': 'count', 'mean_auc': 'unit|null', 'ci95': 'interval|null',
                    'per_finding': ('map', {'auc': 'unit|null', 'ci95': 'interval|null',
                                            'positives': 'count', 'labelled': 'count'})}
# Every field of a transfer record (all required; the writer writes them all).
TRANSFER_SPEC = {
    'schema_version': 'version', 'kind': 'transfer', 'train_on': 'task', 'test_on': 'dataset',
    'protocol': 'protocol', 'label_fraction': 'fraction', 'seed': 'int',
    'checkpoint': 'str|null', 'name': 'str|null', 'run_record': 'str|null', 'model': 'str|null',
    'findings': ('map', {'train_class': 'str', 'test_class': 'str', 'in_mean': 'bool'}),
    'in_domain': _TRANSFER_SCORES, 'transferred': _TRANSFER_SCORES,
    'drop': {'mean_auc': 'number|null', 'ci95': 'interval|null',
             'per_finding': ('map', {'value': 'number|null', 'ci95': 'interval|null'})},
    'n_boot': 'count', 'bootstrap_seed': 'int',
    'label_policy': {'train': 'str|null', 'test': 'str|null'},
    'synthetic_data': 'bool', 'predictions': 'str|null',
}


def validate_transfer_record(record: Mapping, source: str = 'transfer record') -> dict:
  """Checks a transfer record (module docstring); returns a normalised copy.

  Raises ValueError naming `source` and the offending field.
  """
  if not isinstance(record, Mapping):
    raise ValueError(f'{source}: a transfer record must be a JSON object')
  missing = [f for f in TRANSFER_SPEC if f not in record]
  if missing:
    raise ValueError(f'{source}: missing field(s) {missing}')
  out = dict(record)
  for field, spec in TRANSFER_SPEC.items():
    out[field] = records.check_tree(record[field], spec, field, source)
  names = list(out['findings'])
  for part in ('in_domain', 'transferred', 'drop'):
    if list(out[part]['per_finding']) != names:
      raise ValueError(f'{source}: field {part}.per_finding names '
                       f'{list(out[part]["per_finding"])}, not the findings {names}')
  return out


def transfer_stem(record: Mapping) -> str:
  """transfer_record_<A>_to_<B>_<protocol>_f<frac>_seed<seed>[_<name>]."""
  return records.file_stem(
      TRANSFER_PREFIX, f'{record["train_on"]}_to_{record["test_on"]}_{record["protocol"]}', record)
