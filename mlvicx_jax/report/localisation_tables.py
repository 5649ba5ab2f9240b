"""Localisation tables and figures: where classifiers look, against the NIH boxes.

Records of `configs/eval/nih_localise.py` runs carry `localisation` (see
evaluate/explain.py): the classifier's scores and a centre prior's on the
same boxes, per finding and overall. One table per setting (task, protocol,
label fraction): every run's row (the reference encoder's run is a row of
its own, e.g. 'random init') and the centre prior, per finding, with
EVA-X's columns. The figures show the best and the worst box by IoU of each
finding from the predictions file: X-ray, map, box, hit or miss.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import os

from mlvicx_jax.evaluate import record_files
from mlvicx_jax.evaluate import records
from mlvicx_jax.report import markdown as md
from mlvicx_jax.report import paper_results
from mlvicx_jax.report.summary import fraction_key, row_label

OVERALL = 'all findings'
_COLUMNS = (('pointing_game', 'pointing game'), ('iou@0.25', 'IoU@0.25'),
            ('iou@0.5', 'IoU@0.5'), ('iou@0.75', 'IoU@0.75'), ('ap25', 'AP25'),
            ('ap50', 'AP50'), ('miou', 'mIoU'))


def collect(run_sets: Mapping[str, Sequence[Mapping]]) -> list[dict]:
  """(setting key, row label, record) of every record with localisation scores."""
  out = []
  for name, run_set in run_sets.items():
    for r in run_set:
      if (r.get('localisation') or {}).get('classifier'):
        key = (r['task'], r['protocol'], fraction_key(r['label_fraction']))
        out.append({'key': key, 'row': f'{row_label(name, r)}, seed {r["seed"]}',
                    'record': r})
  return out


def _cell(scores: Mapping, metric: str, decimals: int, interval: bool) -> str:
  value = md.fmt(scores.get(metric), decimals)
  ci = (scores.get('ci95') or {}).get(metric)
  if interval and ci is not None:
    value += f' [{md.fmt(ci[0], decimals)}, {md.fmt(ci[1], decimals)}]'
  return value


def _rows(label: str, scores: Mapping, findings: Sequence[str], decimals: int) -> list[list]:
  rows = []
  for finding in findings:
    cell = scores['overall'] if finding == OVERALL else scores['per_finding'].get(finding)
    if cell is None:
      continue
    rows.append([finding, label] + [_cell(cell, m, decimals, m == 'pointing_game')
                                    for m, _ in _COLUMNS]
                + [f'{cell["num_boxes"]} ({cell["num_images"]})', str(cell['no_positive_evidence'])])
  return rows


def section(entries: Sequence[Mapping], decimals: int) -> list[str]:
  """The markdown: one table per setting, findings in rows, the centre prior beside each."""
  if not entries:
    return []
  lines = ['## Localisation against the NIH boxes', '']
  for key in sorted({e['key'] for e in entries}):
    group = [e for e in entries if e['key'] == key]
    task, protocol, fraction = key
    first = group[0]['record']['localisation']
    findings = [OVERALL] + sorted({f for e in group
                                   for f in e['record']['localisation']['classifier']['per_finding']})
    lines += [f'### {paper_results.TASK_TITLES[task]}, {paper_results.PROTOCOL_TITLES[protocol]}, '
              f'{paper_results.format_fraction(fraction)}: Grad-CAM at {first["cam_layer"]}'
              f'{md.synthetic_suffix([e["record"] for e in group])}', '']
    body = []
    for finding in findings:
      for e in group:
        body += _rows(e['row'], e['record']['localisation']['classifier'], [finding], decimals)
      body += _rows('centre prior', first['centre_prior'], [finding], decimals)
    lines += md.markdown_table(['finding', 'map'] + [t for _, t in _COLUMNS]
                               + ['boxes (images)', 'no positive evidence'], body)
    overall = first['classifier']['overall']
    lines += [f"Pointing game: share of boxes whose map maximum lies inside (tolerance "
              f"{first['tolerance_px']:g} px of the 1024 px PNGs); IoU@f: the map thresholded at "
              f"f x its maximum against the box; AP25/AP50, mIoU: boxes around the map's "
              f"connected regions (>= {first['classifier']['settings']['ap_map_threshold']:g} x max) "
              f"against the truth boxes, pooled over findings in '{OVERALL}'. "
              f"On {overall['num_boxes']} boxes in {first['num_box_images']} test images "
              f"({first['not_scored_images']} test images without boxes not scored); intervals: "
              f"bootstrap over images ({first['classifier']['settings']['n_boot']} resamples). "
              'A map with no positive evidence (all zero) is a miss everywhere.', '']
  return lines


def write_figures(entries: Sequence[Mapping], out_dir: str) -> list[str]:
  """One PNG per run: the kept examples (best and worst by IoU per finding)."""
  from mlvicx_jax.report import plots  # pylint: disable=g-import-not-at-top
  paths = []
  for e in entries:
    record = e['record']
    try:
      predictions = record_files.load_predictions(record)
    except FileNotFoundError:
      continue
    if predictions is None or 'loc_maps' not in predictions:
      continue
    class_names = [str(c) for c in predictions['class_names']]
    title = f'{e["row"]}: Grad-CAM and NIH boxes{md.synthetic_suffix([record])}'
    stem = records.slug(f'localisation_{e["row"]}_{record["protocol"]}_'
                             f'f{record["label_fraction"]:g}')
    paths.append(plots.plot_localisation_examples(
        predictions, class_names, os.path.join(out_dir, f'{stem}.png'), title))
  return paths

