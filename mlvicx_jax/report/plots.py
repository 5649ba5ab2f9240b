"""Report figures (matplotlib, Agg canvas).

Figures are drawn on `matplotlib.figure.Figure` objects with an explicit Agg
canvas instead of pyplot, so importing this module never changes the global
backend and nothing needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import os

import matplotlib
import matplotlib.patches
from matplotlib.backends import backend_agg
from matplotlib import figure as mpl_figure
from matplotlib import ticker
import numpy as np
from sklearn import metrics as sk_metrics

from mlvicx_jax import vocabulary
from mlvicx_jax.evaluate import calibration
from mlvicx_jax.evaluate import record_files
from mlvicx_jax.evaluate import records as records_lib
from mlvicx_jax.report import markdown as md
from mlvicx_jax.report import paper_results
from mlvicx_jax.report import summary as summary_lib

RELIABILITY_BINS = 15


def _new_figure(width: float, height: float) -> mpl_figure.Figure:
  fig = mpl_figure.Figure(figsize=(width, height), dpi=100)
  backend_agg.FigureCanvasAgg(fig)
  return fig


def _save(fig: mpl_figure.Figure, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format='png', bbox_inches='tight')
  return path


def plot_roc_curves(labels, scores, class_names: Sequence[str] | None,
                    path: str, title: str = '') -> str:
  """One ROC curve per class, AUC in the legend; single-valued classes skipped.

  Args:
    labels: (N, K) or (N,) 0/1.
    scores: same shape.
    class_names: K names (None: class_0, ...).
    path: PNG file to write.
    title: figure title.

  Returns:
    `path`.
  """
  labels = np.asarray(labels)
  scores = np.asarray(scores)
  if labels.ndim == 1:
    labels, scores = labels[:, None], scores[:, None]
  n_classes = labels.shape[1]
  if class_names is None:
    class_names = [f'class_{k}' for k in range(n_classes)]
  fig = _new_figure(7, 6)
  ax = fig.add_subplot(1, 1, 1)
  cmap = matplotlib.colormaps['tab20']
  for k in range(n_classes):
    keep = ~np.isnan(labels[:, k])  # NaN: a masked label (CheXpert 'ignore')
    y = labels[keep, k]
    if not y.size or y.min() == y.max():
      continue  # no ROC curve without both label values
    fpr, tpr, _ = sk_metrics.roc_curve(y, scores[keep, k])
    auc = sk_metrics.auc(fpr, tpr)
    ax.plot(fpr, tpr, lw=1.2, color=cmap(k % 20),
            label=f'{class_names[k]} ({auc:.3f})')
  ax.plot([0, 1], [0, 1], color='grey', lw=0.8, ls=':')
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate')
  ax.set_title(title)
  ax.legend(loc='lower right', fontsize='small', title='class (AUC)')
  return _save(fig, path)


def plot_reliability(curves: Mapping[str, tuple], path: str, title: str = '',
                     n_bins: int = RELIABILITY_BINS) -> str:
  """Reliability diagram pooled over classes, one curve per entry, and how many
  predictions fall in each bin below it (equal-width bins, NaN labels left out).

  Args:
    curves: label -> (labels, probabilities), each (N,) or (N, K).
    path: PNG file to write.
    title: figure title.
    n_bins: equal-width bins on [0, 1].

  Returns:
    `path`.
  """
  fig = _new_figure(6, 7)
  ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={'height_ratios': [3, 1]})
  ax.plot([0, 1], [0, 1], color='grey', lw=0.8, ls=':', label='calibrated')
  edges = np.linspace(0, 1, n_bins + 1)
  for label, (labels, probs) in curves.items():
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    positive_rate, mean_prob, _ = calibration.reliability_curve(labels, probs, n_bins)
    ece = calibration.expected_calibration_error(labels, probs, n_bins)
    ax.plot(mean_prob, positive_rate, marker='o', lw=1.2, label=f'{label} (ECE {ece:.3f})')
    hist.hist(probs[~np.isnan(labels)], bins=edges, histtype='step', lw=1.2)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_ylabel('observed positive rate')
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(loc='upper left', fontsize='small')
  hist.set_yscale('log')
  hist.set_xlabel(f'mean predicted probability ({n_bins} equal-width bins)')
  hist.set_ylabel('predictions')
  return _save(fig, path)


def plot_localisation_examples(predictions: Mapping, class_names: Sequence[str], path: str,
                               title: str = '') -> str:
  """The kept localisation examples: X-ray, Grad-CAM map and box, hit or miss, IoU.

  A map with no positive evidence is not drawn: the panel says so.
  """
  maps = np.asarray(predictions['loc_maps'])
  count = len(maps)
  columns = min(4, count)
  rows = -(-count // columns)
  fig = _new_figure(3.0 * columns, 3.3 * rows)
  for k in range(count):
    ax = fig.add_subplot(rows, columns, k + 1)
    ax.imshow(np.asarray(predictions['loc_images'][k]), cmap='gray', vmin=0, vmax=1)
    heatmap = maps[k]
    evidence = heatmap.max() > 0
    if evidence:
      ax.imshow(heatmap / heatmap.max(), cmap='jet', alpha=0.4, vmin=0, vmax=1)
    x, y, w, h = (float(v) for v in predictions['loc_boxes'][k])
    hit = bool(predictions['loc_hits'][k])
    ax.add_patch(matplotlib.patches.Rectangle((x - 0.5, y - 0.5), w, h, fill=False,
                                              edgecolor='lime' if hit else 'red', linewidth=1.5))
    if evidence:
      row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
      ax.plot([col], [row], marker='x', color='white', markersize=6)
    finding = class_names[int(predictions['loc_findings'][k])]
    verdict = ('hit' if hit else 'miss') if evidence else 'miss: no positive evidence'
    ax.set_title(f'{finding}: {verdict}\nIoU {float(predictions["loc_iou"][k]):.2f}', fontsize=8)
    ax.axis('off')
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def plot_metric_vs_fraction(
    series: Mapping[str, tuple[Sequence[float], Sequence[float],
                               Sequence[float]]],
    path: str, metric_name: str, title: str = '',
    paper: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> str:
  """Metric against label fraction (log x axis), error bars = sd over seeds.

  Args:
    series: label -> (fractions, means, sds); NaN sd draws no bar.
    path: PNG file to write.
    metric_name: y-axis label.
    title: figure title.
    paper: label -> (fractions, values) drawn dashed, e.g. the paper's
      MLVICX numbers.

  Returns:
    `path`.
  """
  fig = _new_figure(7, 5)
  ax = fig.add_subplot(1, 1, 1)
  all_fractions = set()
  for label, (fractions, means, sds) in series.items():
    order = np.argsort(fractions)
    x = np.asarray(fractions, dtype=float)[order]
    y = np.asarray(means, dtype=float)[order]
    err = np.nan_to_num(np.asarray(sds, dtype=float)[order])
    ax.errorbar(x, y, yerr=err, marker='o', capsize=3, label=label)
    all_fractions.update(x.tolist())
  for label, (fractions, values) in (paper or {}).items():
    order = np.argsort(fractions)
    x = np.asarray(fractions, dtype=float)[order]
    ax.plot(x, np.asarray(values, dtype=float)[order], ls='--', marker='x',
            label=label)
    all_fractions.update(x.tolist())
  ax.set_xscale('log')
  ticks = sorted(all_fractions)
  ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
  ax.xaxis.set_major_formatter(
      ticker.FixedFormatter([f'{100 * t:g}%' for t in ticks]))
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.set_xlabel('label fraction')
  ax.set_ylabel(metric_name)
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize='small')
  return _save(fig, path)


def _classification_predictions(run_sets):
  """(row, task, protocol, fraction) -> [(record, test predictions)] by seed."""
  found = {}
  for name, records in run_sets.items():
    for r in sorted(records, key=lambda r: r['seed']):
      if not r.get('predictions'):
        continue
      predictions = record_files.load_predictions(r)
      if 'scores' in predictions:
        key = (summary_lib.row_label(name, r), r['task'], r['protocol'],
               summary_lib.fraction_key(r['label_fraction']))
        found.setdefault(key, []).append((r, predictions))
  return found


def _setting_title(label, task, protocol, fraction) -> str:
  return (f'{label}: {paper_results.TASK_TITLES[task]}, '
          f'{paper_results.PROTOCOL_TITLES[protocol]}, '
          f'{paper_results.format_fraction(fraction)}')


def write_report_plots(run_sets: Mapping[str, Sequence[Mapping]],
                       summary: Sequence[Mapping], out_dir: str) -> list[str]:
  """The report's figures: ROC curves and reliability diagrams from saved
  predictions, and each metric against the label fraction beside the paper's
  numbers (left out where every record is synthetic; titles then say so)."""
  paths = []
  predictions = _classification_predictions(run_sets)
  # ROC curves: the lowest seed with predictions per row/task/protocol/fraction.
  for (label, task, protocol, fraction), runs in predictions.items():
    r, p = runs[0]
    names = p.get('class_names')
    if names is None:
      names = list((r['test'].get('per_class_auc') or {}).keys()) or None
    path = os.path.join(out_dir, f'roc_{records_lib.slug(label)}_{task}_'
                        f'{protocol}_f{fraction:g}_seed{r["seed"]}.png')
    title = (f'{_setting_title(label, task, protocol, fraction)}, seed {r["seed"]}'
             f'{md.synthetic_suffix([r])}')
    paths.append(plot_roc_curves(
        p['labels'], p['scores'],
        None if names is None else [str(n) for n in names], path, title))
  # Reliability, pooled over classes: every seed whose scores are probabilities.
  for (label, task, protocol, fraction), runs in predictions.items():
    runs = [(r, p) for r, p in runs
            if np.all((p['scores'] >= 0) & (p['scores'] <= 1))]
    if not runs:
      continue
    path = os.path.join(out_dir, f'reliability_{records_lib.slug(label)}_{task}_'
                        f'{protocol}_f{fraction:g}.png')
    title = (f'{_setting_title(label, task, protocol, fraction)}\nreliability, pooled '
             f'over classes{md.synthetic_suffix([r for r, _ in runs])}')
    paths.append(plot_reliability(
        {f'seed {r["seed"]}': (p['labels'], p['scores']) for r, p in runs}, path, title))
  # Metric against label fraction, per task and metric.
  for task in vocabulary.TASKS:
    for metric in records_lib.METRIC_NAMES:
      rows = [r for r in summary if r['task'] == task and r['metric'] == metric]
      if not rows:
        continue
      synthetic = md.all_synthetic(rows)
      series = {}
      for label, protocol in dict.fromkeys((r['row'], r['protocol'])
                                           for r in rows):
        cell = [r for r in rows if (r['row'], r['protocol']) == (label,
                                                                 protocol)]
        mark = md.SYNTHETIC if md.all_synthetic(cell) and not synthetic else ''
        series[f'{label}, {protocol}{mark}'] = ([r['fraction'] for r in cell],
                                                [r['mean'] for r in cell],
                                                [r['sd'] for r in cell])
      paper = {}
      if metric == vocabulary.TASK_METRIC[task]:
        for protocol in dict.fromkeys(r['protocol'] for r in rows):
          if md.all_synthetic([r for r in rows if r['protocol'] == protocol]):
            continue  # the paper measured real X-rays
          points = [(f, paper_results.paper_reference(task, protocol, f))
                    for f in paper_results.FRACTIONS]
          points = [(f, v) for f, v in points if v is not None]
          if points:
            paper[f'{paper_results.OURS} paper, {protocol}'] = (
                [f for f, _ in points], [v for _, v in points])
      title = records_lib.METRIC_TITLES[metric]
      path = os.path.join(out_dir, f'{metric}_vs_fraction_{task}.png')
      paths.append(plot_metric_vs_fraction(
          series, path, title,
          f'{paper_results.TASK_TITLES[task]}: {title}{md.SYNTHETIC if synthetic else ""}',
          paper))
  return paths
