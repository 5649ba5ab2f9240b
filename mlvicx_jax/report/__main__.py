r"""Tables and figures from evaluation run records, beside the paper's numbers.

  python -m mlvicx_jax.report --runs=RUNS_A [--runs=RUNS_B] [--out=DIR]

Each RUNS directory (searched recursively; a glob also works) holds the
`run_record_*.json` files that evaluation runs write. With several run sets
the first is compared with each other one by paired t-tests (paired by seed).
`--runs=A,B` and `--runs A B` work too.

Writes into --out (default RUNS_A/report): report.md (each run set's
protocol as its records state it: encoder, label subset, selection metric;
paper Tables I-III layout: mean ± sd over seeds per label fraction and
protocol beside the paper's MLVICX numbers, every other recorded metric
marked as not in the paper (RSNA AUC; SIIM Dice over positive images and
per image), each SIIM Dice with its empty-prediction floor; per-class AUCs,
each run's bootstrap 95% CI, calibration and operating points of
classifiers, t-tests; "(synthetic data)" and no paper numbers where every
record is synthetic), summary.json (the same numbers, unrounded), runs.csv
(one row per run) and PNG figures (ROC curves per class and reliability
diagrams from saved predictions, metric against label fraction).
"""

import os
import sys

from absl import app
from absl import flags

from mlvicx_jax import storage
from mlvicx_jax.report import build as report_build

_RUNS = flags.DEFINE_multi_string(
    'runs', [], 'Run set directory or glob of run records; repeat (or '
    'comma-separate) for several run sets. The first is compared with the '
    'others by paired t-tests.')
_LABELS = flags.DEFINE_list(
    'labels', [], 'Names of the run sets, in --runs order (default: their '
    'directory names).')
_OUT = flags.DEFINE_string('out', None,
                           'Output directory (default: <first run set>/'
                           'report).')
_ALL_METHODS = flags.DEFINE_bool(
    'all_methods', False, "Show every method of the paper's tables, not only "
    'MLVICX.')
_N_BOOT = flags.DEFINE_integer(
    'n_boot', 1000, 'Bootstrap resamples for runs that saved predictions but '
    'no CI or operating points; 0 disables.')
_ALPHA = flags.DEFINE_float('alpha', 0.05, 'Bootstrap CI level: 1 - alpha.')
_SEED = flags.DEFINE_integer('seed', 0, 'Bootstrap seed.')
_DECIMALS = flags.DEFINE_integer('decimals', 3,
                                 'Decimals of reproduced numbers.')
_PLOTS = flags.DEFINE_bool('plots', True, 'Write PNG figures.')


def run_dirs_from(flag_values, positional) -> list[str]:
  """--runs values split at commas, then positional arguments (--runs A B)."""
  dirs = [d for value in flag_values for d in value.split(',') if d]
  return dirs + [d for d in positional if d]


def main(argv):
  run_dirs = run_dirs_from(_RUNS.value, argv[1:])
  if not run_dirs:
    raise app.UsageError('--runs is required: a directory of run records')
  out_dir = _OUT.value or os.path.join(run_dirs[0], 'report')
  try:
    outputs = report_build.build_report(
        run_dirs, out_dir, labels=_LABELS.value or None,
        all_methods=_ALL_METHODS.value, n_boot=_N_BOOT.value,
        alpha=_ALPHA.value, seed=_SEED.value, decimals=_DECIMALS.value,
        plots=_PLOTS.value)
  except (FileNotFoundError, ValueError, storage.SaveError) as e:
    print(f'error: report: {e}', file=sys.stderr)
    return 1
  print(f'wrote {outputs["markdown"]}')
  print(f'wrote {outputs["summary"]}')
  print(f'wrote {outputs["csv"]}')
  for path in outputs['plots']:
    print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  app.run(main)
