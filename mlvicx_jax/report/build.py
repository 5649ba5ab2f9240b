"""report.md, summary.json, runs.csv and the figures from one or more run sets.

Reads every run record and transfer record (schemas in `evaluate.records`)
under each run directory, aggregates them (`summary`, `transfer_tables`) and
writes the sections built in `markdown` and the table modules and,
optionally, the figures of `plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import os

from mlvicx_jax import vocabulary
from mlvicx_jax.evaluate import record_files
from mlvicx_jax.evaluate.records import METRIC_NAMES, SOURCE_KEY
from mlvicx_jax.report import calibration_tables
from mlvicx_jax.report import localisation_tables
from mlvicx_jax.report import markdown as md
from mlvicx_jax.report import transfer_tables
from mlvicx_jax.report.summary import (SD_DDOF, check_duplicates, fraction_key, paired_tests,
                                       row_label, run_ci, summarize, summarize_floors,
                                       summarize_per_class)


def _unique_labels(run_dirs: Sequence[str],
                   labels: Sequence[str] | None) -> list[str]:
  if labels:
    if len(labels) != len(run_dirs):
      raise ValueError(f'{len(labels)} labels for {len(run_dirs)} run sets')
    names = list(labels)
  else:
    names = [os.path.basename(os.path.normpath(d)) or d for d in run_dirs]
  if len(set(names)) != len(names):
    names = [f'{chr(ord("A") + i)}: {n}' if i < 26 else f'{i}: {n}'
             for i, n in enumerate(names)]
  return names


def build_report(run_dirs: Sequence[str], out_dir: str,
                 labels: Sequence[str] | None = None,
                 all_methods: bool = False, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0, decimals: int = 3,
                 plots: bool = True) -> dict:
  """Reads run sets and writes report.md, summary.json, runs.csv and PNGs.

  Args:
    run_dirs: directories (or globs) of run records, one per run set.
    out_dir: output directory (created).
    labels: names of the run sets (default: directory names).
    all_methods: also list every method of the paper, not only MLVICX.
    n_boot: bootstrap resamples for runs with predictions but no recorded
      CI or operating points (0 disables).
    alpha: 0.05 gives 95% intervals.
    seed: bootstrap seed.
    decimals: digits of reproduced numbers in the markdown.
    plots: write the PNG figures.

  Returns:
    {'markdown', 'summary', 'csv': paths, 'plots': [paths]}.
  """
  from mlvicx_jax.report import plots as plots_lib  # matplotlib is slow

  if not run_dirs:
    raise ValueError('no run sets given')
  names = _unique_labels(run_dirs, labels)
  run_sets = {}
  for name, run_dir in zip(names, run_dirs):
    records = record_files.load_run_records(run_dir)
    check_duplicates(name, records)
    run_sets[name] = records
  os.makedirs(out_dir, exist_ok=True)

  summary = summarize(run_sets)
  floors = summarize_floors(run_sets)
  labelled = [(row_label(name, r), r) for name, records in run_sets.items()
              for r in records]
  per_class = summarize_per_class(labelled)
  synthetic_keys = {}
  for label, r in labelled:
    key = (label, r['task'], r['protocol'])
    synthetic_keys[key] = synthetic_keys.get(key, True) and bool(r.get('synthetic_data'))
  calibrations = calibration_tables.collect(run_sets, n_boot)
  localised = localisation_tables.collect(run_sets)
  transfers = transfer_tables.collect(dict(zip(names, run_dirs)))
  transfer_cells = transfer_tables.matrix_cells(transfers, labelled)

  run_list = []
  for name, records in run_sets.items():
    for r in sorted(records, key=lambda r: (
        r['task'], r['protocol'], r['label_fraction'], r['seed'])):
      ci, ci_source = run_ci(r, n_boot, alpha, seed)
      run_list.append(dict(
          run_set=name, row=row_label(name, r), task=r['task'],
          protocol=r['protocol'], fraction=fraction_key(r['label_fraction']),
          seed=r['seed'], metric=r['metric_name'],
          value=r['test'][r['metric_name']], ci95=ci, ci_source=ci_source,
          floor=(r.get('floors') or {}).get(r['metric_name']),
          best_epoch=r.get('best_epoch'), checkpoint=r.get('checkpoint'),
          synthetic=bool(r.get('synthetic_data')), source=r.get(SOURCE_KEY)))

  lines = ['# mlvicx_jax evaluation report', '']
  for name, run_dir in zip(names, run_dirs):
    lines.append(f'- run set **{name}**: `{run_dir}` '
                 f'({len(run_sets[name])} records)')
  lines += ['', 'Protocol (from the records):', '']
  for name, records in run_sets.items():
    lines += md.protocol_lines(name, records)
  lines += ['', 'Reproduced cells: test metric, mean ± sample sd over seeds '
            f'(ddof={SD_DDOF}), n = number of seeds. Paper cells as printed '
            '(MLVICX, JBHI 2024).', '']
  if md.all_synthetic(r for records in run_sets.values() for r in records):
    lines += ['Every record comes from synthetic builds (mlvicx_jax.synthetic): tables and '
              "figures say \"(synthetic data)\" and the paper's numbers, measured on real "
              'X-rays, are not shown beside them.', '']
  for task in vocabulary.TASKS:
    task_rows = [r for r in summary if r['task'] == task]
    if task == 'siim':
      if task_rows:
        lines += md.siim_section(
            {m: [r for r in task_rows if r['metric'] == m]
             for m in md.DICE_METRICS},
            {(f['metric'], f['protocol'], f['fraction']): f['floor']
             for f in floors if f['task'] == task}, all_methods, decimals)
      continue
    paper_metric = vocabulary.TASK_METRIC[task]
    for metric in (paper_metric,) + tuple(
        m for m in METRIC_NAMES if m != paper_metric):
      metric_rows = [r for r in task_rows if r['metric'] == metric]
      for protocol in vocabulary.PROTOCOLS:
        rows = [r for r in metric_rows if r['protocol'] == protocol]
        if rows:
          lines += md.classification_section(task, protocol, metric, rows,
                                             all_methods, decimals)
  lines += md.per_class_section(
      per_class, decimals, frozenset(k for k, synthetic in synthetic_keys.items() if synthetic))
  lines += calibration_tables.calibration_section(calibrations, decimals)
  lines += calibration_tables.operating_points_section(calibrations, decimals)
  lines += localisation_tables.section(localised, decimals)
  lines += transfer_tables.section(transfer_cells, transfers, decimals)
  lines += md.runs_section(run_list, decimals)

  tests = {}
  first = names[0]
  for other in names[1:]:
    tests[f'{first} vs {other}'] = paired_tests(run_sets[first],
                                                run_sets[other])
    lines += md.ttest_section(first, other, tests[f'{first} vs {other}'],
                              decimals, md.all_synthetic(run_sets[first] + run_sets[other]))

  plot_paths = []
  if plots:
    plot_paths = plots_lib.write_report_plots(run_sets, summary, out_dir)
    plot_paths += localisation_tables.write_figures(localised, out_dir)
    if plot_paths:
      lines += ['## Figures', '']
      lines += [f'![{os.path.basename(p)}]({os.path.basename(p)})'
                for p in plot_paths]
      lines.append('')

  md_path = os.path.join(out_dir, 'report.md')
  record_files.atomic_write(md_path, '\n'.join(lines))
  summary_path = os.path.join(out_dir, 'summary.json')
  record_files.atomic_write(summary_path, json.dumps(record_files.json_ready(
      {'run_sets': dict(zip(names, run_dirs)), 'cells': summary,
       'floors': floors, 'runs': run_list, 'paired_tests': tests,
       'calibration': calibrations, 'transfer': transfer_cells}),
      indent=2, allow_nan=False) + '\n')
  csv_path = os.path.join(out_dir, 'runs.csv')
  record_files.atomic_write(csv_path, record_files.csv_text(
      [{'run_set': name, **record_files.flatten_record(r)}
       for name, records in run_sets.items() for r in records]))
  return {'markdown': md_path, 'summary': summary_path, 'csv': csv_path,
          'plots': plot_paths}

