"""Markdown sections of the evaluation report, in the paper's table layouts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import math

from mlvicx_jax import vocabulary
from mlvicx_jax.report import paper_results
from mlvicx_jax.evaluate.records import METRIC_TITLES

DASH = '–'
SYNTHETIC = ' (synthetic data)'  # in the title of everything measured on synthetic builds


def all_synthetic(items: Iterable[Mapping]) -> bool:
  """Whether every record (`synthetic_data`) or summary row (`synthetic`) is synthetic.

  Only then are the paper's numbers left out: they describe real X-rays, and
  a synthetic run beside them would read as a reproduction.
  """
  items = list(items)
  return bool(items) and all(r.get('synthetic', r.get('synthetic_data')) for r in items)


def synthetic_suffix(items: Iterable[Mapping]) -> str:
  return SYNTHETIC if all_synthetic(items) else ''


def _reproduced(label: str, rows: Sequence[Mapping], synthetic_table: bool) -> str:
  """A measured row's label; synthetic rows among real ones say so."""
  marked = not synthetic_table and all_synthetic(rows)
  return f'{label} (reproduced{", synthetic data" if marked else ""})'


def fmt(value: float | None, decimals: int) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return DASH
  return f'{value:.{decimals}f}'


def format_mean_sd(mean: float, sd: float, n: int, decimals: int = 3) -> str:
  text = fmt(mean, decimals)
  if n > 1:
    text += f' ± {fmt(sd, decimals)}'
  return f'{text} (n={n})'


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return lines + ['']


def _paper_methods(rows, all_methods: bool) -> tuple[str, ...]:
  """The paper's rows to show: all, or MLVICX's and those of the measured methods."""
  measured = {r.get('paper_method', paper_results.OURS) for r in rows} | {paper_results.OURS}
  return tuple(m for m in paper_results.METHODS if all_methods or m in measured)


def _paper_rows(task: str, protocol: str, fractions: Sequence[float],
                methods: Sequence[str]) -> list[list[str]]:
  rows = []
  for method in methods:
    cells = [paper_results.paper_reference(task, protocol, f, method)
             for f in fractions]
    if any(c is not None for c in cells):
      rows.append([f'{method} (paper)'] + [fmt(c, 3) for c in cells])
  return rows


def classification_section(task, protocol, metric, rows, all_methods,
                            decimals) -> list[str]:
  fractions = sorted({r['fraction'] for r in rows})
  synthetic = all_synthetic(rows)
  table = paper_results.paper_table_for(task, protocol)
  paper_metric = metric == vocabulary.TASK_METRIC[task] and table is not None
  note = []
  if synthetic:
    source = 'synthetic data'
    if paper_metric:
      note = [f"Every record here comes from a synthetic build: the paper's Table {table} "
              '(real X-rays) is not shown beside it.', '']
    paper_metric = False
  elif paper_metric:
    fractions = sorted(set(fractions) | set(paper_results.FRACTIONS))
    source = f'paper Table {table}'
  else:
    source = 'not reported in the paper'
  title = (f'## {paper_results.TASK_TITLES[task]}, '
           f'{paper_results.PROTOCOL_TITLES[protocol]}: '
           f'{METRIC_TITLES[metric]} ({source})')
  body = []
  if paper_metric:
    body += _paper_rows(task, protocol, fractions, _paper_methods(rows, all_methods))
  for label in dict.fromkeys(r['row'] for r in rows):
    by_fraction = {r['fraction']: r for r in rows if r['row'] == label}
    body.append([_reproduced(label, list(by_fraction.values()), synthetic)] + [
        format_mean_sd(by_fraction[f]['mean'], by_fraction[f]['sd'],
                       by_fraction[f]['n'], decimals)
        if f in by_fraction else DASH for f in fractions])
  header = ['method'] + [paper_results.format_fraction(f) for f in fractions]
  return [title, ''] + note + markdown_table(header, body)


DICE_METRICS = ('dice', 'dice_positive', 'dice_per_image')
FLOOR_ROW = 'empty prediction (floor)'


def siim_note() -> str:
  """Which Dice stands beside the paper's Table III, and why."""
  frozen = paper_results.paper_methods('siim', 'frozen', 0.3).values()
  return (
      'The global Dice (2·ΣTP / (Σpredicted + Σtrue), pooled over every pixel '
      'of the test split) stands beside the paper\'s Table III. The paper does '
      'not define its Dice. On its balanced split a per-image Dice that scores '
      'an empty prediction on an empty mask as 1 gives 0.50 to a model that '
      'predicts nothing, above every frozen 30% cell of Table III '
      f'({min(frozen):.2f}–{max(frozen):.2f}), so it cannot be the paper\'s '
      'Dice; the global Dice gives such a model 0 and does not depend on the '
      'balance of positive and negative images. The Dice over positive images '
      '(floor 0) and the per-image Dice (floor: the share of test images '
      'without pneumothorax) are not in the paper. Each table\'s '
      f'"{FLOOR_ROW}" row is what a model that predicts no pneumothorax '
      'scores on the same test split, from the records (mean over them).')


def siim_section(rows_by_metric: Mapping[str, list], floors: Mapping,
                 all_methods: bool, decimals: int) -> list[str]:
  """The SIIM heading, the note on Dice, one table per Dice with its floor."""
  mark = synthetic_suffix(r for rows in rows_by_metric.values() for r in rows)
  lines = [f'## {paper_results.TASK_TITLES["siim"]}: Dice{mark}', '', siim_note(), '']
  for metric in DICE_METRICS:
    if rows_by_metric.get(metric):
      lines += _dice_table(metric, rows_by_metric[metric], floors,
                           all_methods, decimals)
  return lines


def _dice_table(metric, rows, floors, all_methods, decimals) -> list[str]:
  synthetic = all_synthetic(rows)
  beside_paper = metric == vocabulary.TASK_METRIC['siim'] and not synthetic
  columns = {(r['protocol'], r['fraction']) for r in rows}
  if beside_paper:
    columns |= set(paper_results.TABLE_III_COLUMNS)
  columns = sorted(columns, key=lambda c: (
      vocabulary.PROTOCOLS.index(c[0]), c[1]))
  body = []
  if beside_paper:
    for method in _paper_methods(rows, all_methods):
      cells = []
      for protocol, fraction in columns:
        if (protocol, fraction) in paper_results.TABLE_III_COLUMNS:
          setting = ('siim', protocol)
          mean = paper_results.paper_value('III', setting, method, fraction)
          sd = paper_results.paper_sd(setting, method, fraction)
          cells.append(f'{mean:.2f} ± {sd:.2f}')
        else:
          cells.append(DASH)
      body.append([f'{method} (paper)'] + cells)
  for label in dict.fromkeys(r['row'] for r in rows):
    by_column = {(r['protocol'], r['fraction']): r for r in rows
                 if r['row'] == label}
    body.append([_reproduced(label, list(by_column.values()), synthetic)] + [
        format_mean_sd(by_column[c]['mean'], by_column[c]['sd'],
                       by_column[c]['n'], decimals)
        if c in by_column else DASH for c in columns])
  body.append([FLOOR_ROW] + [fmt(floors.get((metric,) + c), decimals)
                             for c in columns])
  header = ['method'] + [
      f'{paper_results.PROTOCOL_SHORT[p]} {paper_results.format_fraction(f)}'
      for p, f in columns]
  source = (SYNTHETIC if synthetic else
            ', beside paper Table III' if beside_paper else ', not in the paper')
  title = f'### {paper_results.TASK_TITLES["siim"]}: {METRIC_TITLES[metric]}{source}'
  return [title, ''] + markdown_table(header, body)


def per_class_section(per_class: Mapping, decimals: int,
                      synthetic: frozenset = frozenset()) -> list[str]:
  """Per-class AUC tables; `synthetic` holds the (row, task, protocol) keys of synthetic runs."""
  lines = []
  rows = list(dict.fromkeys(label for label, _, _ in per_class))
  order = lambda key: (vocabulary.TASKS.index(key[1]),
                       vocabulary.PROTOCOLS.index(key[2]),
                       rows.index(key[0]))
  for label, task, protocol in sorted(per_class, key=order):
    classes = per_class[(label, task, protocol)]
    fractions = sorted({f for fracs in classes.values() for f in fracs})
    if not fractions or len(classes) < 2:
      continue  # one class: its AUC is the mean AUC, tabulated above
    mark = SYNTHETIC if (label, task, protocol) in synthetic else ''
    lines += [f'### Per-class AUC: {paper_results.TASK_TITLES[task]}, '
              f'{paper_results.PROTOCOL_TITLES[protocol]}, {label}{mark}', '']
    body = []
    for cls, fracs in classes.items():
      cells = []
      for f in fractions:
        if f not in fracs:
          cells.append(DASH)
          continue
        mean, sd, n = fracs[f]
        cells.append(fmt(mean, decimals) +
                     (f' ± {fmt(sd, decimals)}' if n > 1 else ''))
      body.append([cls] + cells)
    lines += markdown_table(
        ['class'] + [paper_results.format_fraction(f) for f in fractions], body)
  if lines:
    mark = SYNTHETIC if per_class and set(per_class) <= set(synthetic) else ''
    lines = ['## Per-class test AUC (mean ± sd over seeds; undefined AUCs '
             f'left out){mark}', ''] + lines
  return lines


def runs_section(run_list, decimals) -> list[str]:
  body = []
  synthetic = all_synthetic(run_list)
  for item in run_list:
    ci = item['ci95']
    ci_text = (f'[{fmt(ci[0], decimals)}, {fmt(ci[1], decimals)}]'
               f'{"" if item["ci_source"] == "record" else " (b)"}'
               if ci else DASH)
    row = item['row'] + (SYNTHETIC if item.get('synthetic') and not synthetic else '')
    body.append([row, item['task'], item['protocol'],
                 paper_results.format_fraction(item['fraction']),
                 item['seed'], METRIC_TITLES[item['metric']],
                 fmt(item['value'], decimals), ci_text,
                 fmt(item['floor'], decimals),
                 DASH if item['best_epoch'] is None else item['best_epoch'],
                 item['checkpoint'] or DASH])
  header = ['run', 'task', 'protocol', 'fraction', 'seed', 'metric', 'test',
            '95% CI', 'floor', 'best epoch', 'checkpoint']
  return ([f'## Runs{SYNTHETIC if synthetic else ""}', '',
           '95% CIs are bootstrap percentile intervals over test images, as '
           'recorded by the run or, marked (b), computed here from its saved '
           'predictions. Floor: what an empty prediction scores on the same '
           'test split (segmentation).', ''] + markdown_table(header, body))


def ttest_section(label_a, label_b, tests, decimals, synthetic: bool = False) -> list[str]:
  """Paired t-tests; beside synthetic run sets the paper's p-values are not quoted."""
  body = []
  for t in tests:
    body.append([t['task'], t['protocol'], METRIC_TITLES[t['metric']],
                 paper_results.format_fraction(t['fraction']), t['n'],
                 fmt(t.get('mean_a'), decimals),
                 fmt(t.get('mean_b'), decimals),
                 fmt(t.get('mean_diff'), decimals),
                 fmt(t['t'], 3),
                 DASH if t['p'] is None else f'{t["p"]:.3g}', t['note']])
  header = ['task', 'protocol', 'metric', 'fraction', 'pairs',
            f'mean {label_a}', f'mean {label_b}', 'mean diff', 't', 'p',
            'note']
  sig = paper_results.SIGNIFICANCE
  paper_p = ', '.join(f'{paper_results.format_fraction(f)}: p = {p:.3g}'
                      for f, p in sig['p_values'].items())
  lines = [f'## Paired t-tests: {label_a} vs {label_b} (paired by seed, '
           f'two-sided){SYNTHETIC if synthetic else ""}', ''] + markdown_table(header, body)
  if synthetic:
    return lines
  return lines + [f'Paper: MLVICX vs {sig["baseline"]}, '
                  f'{paper_results.PROTOCOL_TITLES[sig["protocol"]]}, paired t-test '
                  f'over {sig["n_runs"]} runs: {paper_p}.', '']


# --- protocol lines ----------------------------------------------------------


def describe_encoder(encoder: Mapping) -> str:
  """'context blocks kept, BatchNorm statistics from the checkpoint', ..."""
  keep = encoder['context_blocks'] == 'keep'
  if encoder.get('random_init'):
    parts = ['random initialisation ' + ('(with context blocks)' if keep else
                                         '(no context blocks)')]
  else:
    parts = ['context blocks kept' if keep else 'context blocks dropped']
    if encoder.get('method'):
      parts.insert(0, f"pretrained with {paper_results.paper_row(encoder['method'])}")
  if encoder['bn_statistics'] == 'checkpoint':
    parts.append('BatchNorm statistics from the checkpoint')
  else:
    images, batches = encoder.get('bn_images'), encoder.get('bn_batches')
    text = 'BatchNorm statistics re-estimated on ' + (
        'downstream training images' if images is None else
        f'{images:,} downstream training images')
    if batches is not None:
      text += f' ({batches:,} batch{"" if batches == 1 else "es"})'
    parts.append(text)
  return ', '.join(parts)


def describe_label_subset(subset: Mapping) -> str:
  """How the labelled training images were drawn (sizes vary by fraction)."""
  if subset['mode'] == 'fixed':
    text = 'one fixed subset for every seed'
    if subset.get('seed') is not None:
      text += f' (subset seed {subset["seed"]})'
  else:
    text = 'a new subset per seed'
  if subset.get('positive_per_class'):
    text += ', at least one positive per class where the split has one'
  return text


_PROTOCOL_FIELDS = (
    ('encoder', 'encoder', describe_encoder),
    ('label_subset', 'label subset', describe_label_subset),
    ('selection_metric', 'selection',
     lambda m: f'early stopping on validation {METRIC_TITLES.get(m, m)}'),
    ('label_policy', 'labels',
     lambda p: f"uncertain policy {p.get('uncertain') or 'n/a'}; "
               f"classes: {', '.join(p.get('classes') or [])}"),
)


def protocol_lines(run_set: str, records: Sequence[Mapping]) -> list[str]:
  """One line per distinct value of each protocol field in a run set.

  A value that not every record of the run set shares names its tasks.
  """
  lines = []
  for field, title, describe in _PROTOCOL_FIELDS:
    if not any(r.get(field) is not None for r in records):
      continue
    groups = {}
    for r in records:
      value = r.get(field)
      text = 'not recorded' if value is None else describe(value)
      groups.setdefault(text, []).append(r)
    for text, group in groups.items():
      if field == 'label_subset':
        added = max([r[field].get('added_for_positives') or 0
                     for r in group if r.get(field)], default=0)
        text += (f' ({added:,} image{"" if added == 1 else "s"} added at '
                 'most)' if added else '')
      if len(group) < len(records):
        tasks = dict.fromkeys(r['task'] for r in group)
        text += f' [{", ".join(tasks)}; {len(group)} of {len(records)} runs]'
      lines.append(f'- **{run_set}**: {title}: {text}')
  if not lines:
    lines.append(f'- **{run_set}**: encoder, label subset and selection '
                 'metric not recorded (records older than these fields)')
  return lines
