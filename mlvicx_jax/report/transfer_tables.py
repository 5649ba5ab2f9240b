"""Transfer tables: classifiers trained on one build, tested on another (evaluate/transfer.py).

Per run set row, protocol and label fraction: a matrix whose rows are the
builds the classifiers were trained on and whose columns are the builds they
were tested on, each cell the mean AUC over the findings the two share
(data/shared_findings.py). The diagonal is the training build's own test
split over all its classes (its run records). Then, per pair, one row per
shared finding: in-domain AUC, transferred AUC and the drop. Several seeds
give mean ± sd; one seed gives its bootstrap 95% interval.
"""
from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
import math

from mlvicx_jax import vocabulary
from mlvicx_jax.evaluate import record_files
from mlvicx_jax.evaluate.records import SOURCE_KEY
from mlvicx_jax.report import markdown as md
from mlvicx_jax.report import paper_results
from mlvicx_jax.report.summary import fraction_key, mean_sd, row_label


def title(dataset: str) -> str:
  """A dataset's name in the report: its task title (every dataset of the matrix is a task)."""
  return paper_results.TASK_TITLES.get(dataset, dataset)


def collect(run_dirs: Mapping[str, str]) -> list[dict]:
  """{'row', 'key', 'record'} of every transfer record under each run set's directory."""
  entries, seen = [], {}
  for name, run_dir in run_dirs.items():
    for r in record_files.load_transfer_records(run_dir):
      row = row_label(name, r)
      key = (row, r['protocol'], fraction_key(r['label_fraction']))
      pair = key + (r['train_on'], r['test_on'], r['seed'])
      if pair in seen:
        raise ValueError(f'run set {name!r} has two transfer records for {pair[3]} -> '
                         f'{pair[4]}, {pair[1]}, fraction {pair[2]}, seed {pair[5]}: '
                         f'{seen[pair]} and {r.get(SOURCE_KEY)}; remove one')
      seen[pair] = r.get(SOURCE_KEY)
      entries.append({'row': row, 'key': key, 'record': r})
  return entries


def _stats(values: Sequence) -> dict:
  """{'mean', 'sd', 'n'} of the finite values (mean None when there are none)."""
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return {'mean': None, 'sd': None, 'n': 0}
  mean, sd = mean_sd(values)
  return {'mean': mean, 'sd': None if len(values) < 2 else sd, 'n': len(values)}


def _order(datasets) -> list:
  return sorted(set(datasets), key=vocabulary.DATASETS.index)


def matrix_cells(entries: Sequence[Mapping], labelled: Sequence[tuple]) -> list[dict]:
  """Every cell of every matrix: transferred mean AUC (off the diagonal), in-domain (on it).

  `labelled`: (row label, run record) pairs of the same run sets, for the diagonal.
  Cells are means over seeds; ci95 is the record's interval when there is one seed.
  """
  groups = collections.defaultdict(list)
  for e in entries:
    r = e['record']
    groups[e['key'] + (r['train_on'], r['test_on'])].append(r)
  cells = []
  for (row, protocol, fraction, a, b), group in groups.items():
    stats = _stats([r['transferred']['mean_auc'] for r in group])
    cells.append(dict(
        row=row, protocol=protocol, fraction=fraction, train_on=a, test_on=b, kind='transfer',
        **stats, ci95=group[0]['transferred']['ci95'] if len(group) == 1 else None,
        in_domain=_stats([r['in_domain']['mean_auc'] for r in group])['mean'],
        drop=_stats([r['drop']['mean_auc'] for r in group])['mean'],
        findings=max(sum(f['in_mean'] for f in r['findings'].values()) for r in group),
        synthetic=all(r['synthetic_data'] for r in group)))
  for row, protocol, fraction, a in dict.fromkeys(
      (c['row'], c['protocol'], c['fraction'], c['train_on']) for c in cells):
    runs = [r for label, r in labelled if label == row and r['task'] == a
            and r['protocol'] == protocol and fraction_key(r['label_fraction']) == fraction]
    if runs:
      cells.append(dict(
          row=row, protocol=protocol, fraction=fraction, train_on=a, test_on=a,
          kind='in-domain', **_stats([r['test'].get('mean_auc') for r in runs]),
          ci95=runs[0].get('ci95') if len(runs) == 1 else None, in_domain=None, drop=None,
          findings=len(runs[0]['test'].get('per_class_auc') or {}),
          synthetic=all(bool(r.get('synthetic_data')) for r in runs)))
  return cells


def _cell(stats: Mapping, decimals: int) -> str:
  if stats.get('mean') is None:
    return md.DASH
  text = md.fmt(stats['mean'], decimals)
  if stats.get('n', 0) > 1:
    return f'{text} ± {md.fmt(stats["sd"], decimals)} (n={stats["n"]})'
  ci = stats.get('ci95')
  return text + (f' [{md.fmt(ci[0], decimals)}, {md.fmt(ci[1], decimals)}]' if ci else '')


def _matrix(cells: Sequence[Mapping], decimals: int) -> list[str]:
  trained = _order(c['train_on'] for c in cells)
  tested = trained + [d for d in _order(c['test_on'] for c in cells) if d not in trained]
  by_pair = {(c['train_on'], c['test_on']): c for c in cells}
  body = []
  for a in trained:
    row = [title(a)]
    for b in tested:
      cell = by_pair.get((a, b))
      text = md.DASH if cell is None else _cell(cell, decimals)
      if cell is not None and cell['mean'] is not None:
        text += f' ({cell["findings"]} {"classes" if a == b else "findings"})'
      row.append(text)
    body.append(row)
  return md.markdown_table(['trained on \\ tested on'] + [title(b) for b in tested], body)


def _finding_value(group, part: str, finding: str, key: str) -> dict:
  values = [r[part]['per_finding'][finding][key] for r in group]
  stats = _stats(values)
  if len(group) == 1:
    stats['ci95'] = group[0][part]['per_finding'][finding]['ci95']
  return stats


def _pair_table(group: Sequence[Mapping], decimals: int) -> list[str]:
  first = group[0]
  a, b = first['train_on'], first['test_on']
  whole = lambda part: dict(_stats([r[part]['mean_auc'] for r in group]),
                            ci95=first[part]['ci95'] if len(group) == 1 else None)
  count = max(sum(f['in_mean'] for f in r['findings'].values()) for r in group)
  body = [[f'mean over {count} of {len(first["findings"])} findings', '', '',
           _cell(whole('in_domain'), decimals), _cell(whole('transferred'), decimals),
           _cell(whole('drop'), decimals), '']]
  for finding, names in first['findings'].items():
    out = first['transferred']['per_finding'][finding]
    mark = '' if all(r['findings'][finding]['in_mean'] for r in group) else ' †'
    body.append([finding + mark, names['train_class'], names['test_class'],
                 _cell(_finding_value(group, 'in_domain', finding, 'auc'), decimals),
                 _cell(_finding_value(group, 'transferred', finding, 'auc'), decimals),
                 _cell(_finding_value(group, 'drop', finding, 'value'), decimals),
                 f'{out["positives"]:,} / {out["labelled"]:,}'])
  return ([f'#### {title(a)} -> {title(b)}: per finding', ''] + md.markdown_table(
      ['finding', f'{title(a)} class', f'{title(b)} class', f'in-domain AUC ({title(a)} test)',
       f'transferred AUC ({title(b)} test)', 'drop', f'{title(b)} test positives / labelled'],
      body))


def section(cells: Sequence[Mapping], entries: Sequence[Mapping], decimals: int) -> list[str]:
  """The markdown: per setting, the matrix, then one per-finding table per pair."""
  if not entries:
    return []
  lines = ['## Transfer across builds', '',
           'Rows: the build a classifier was trained on; columns: the build it was tested on. '
           "Off the diagonal: mean AUC on the tested build's test split over the findings both "
           'builds name (data/shared_findings.py) whose AUC is defined on both test splits; on '
           "the diagonal: the training build's own test split over all its classes. One seed: "
           'bootstrap 95% interval over test images; several: mean ± sd over seeds. A drop '
           '(transferred minus in-domain over the same findings) mixes image-domain shift with '
           "differences in how each dataset's labels were made (report-mining NLP, "
           "physicians, radiologists' reads); the in-domain row is the reference. Each "
           "build's uncertain labels follow its own policy (CheXpert: 'ignore' leaves them out "
           "of that finding's AUC).", '']
  for key in dict.fromkeys(e['key'] for e in entries):
    row, protocol, fraction = key
    group = [e['record'] for e in entries if e['key'] == key]
    lines += [f'### Transfer matrix: {row}, {paper_results.PROTOCOL_TITLES[protocol]}, '
              f'{paper_results.format_fraction(fraction)}{md.synthetic_suffix(group)}', '']
    lines += _matrix([c for c in cells if (c['row'], c['protocol'], c['fraction']) == key],
                     decimals)
    pairs = collections.defaultdict(list)
    for r in group:
      pairs[(r['train_on'], r['test_on'])].append(r)
    for pair in sorted(pairs, key=lambda p: (vocabulary.DATASETS.index(p[0]),
                                             vocabulary.DATASETS.index(p[1]))):
      lines += _pair_table(sorted(pairs[pair], key=lambda r: r['seed']), decimals)
    lines += ['† AUC undefined on one of the two test splits (one label value after '
              'masking): out of both means. Positives / labelled: of the tested build, '
              'masked labels not counted.', '']
  return lines
