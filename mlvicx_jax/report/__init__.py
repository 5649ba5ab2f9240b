"""Tables and figures from evaluation run records, beside the paper's numbers.

  paper_results  the paper's Tables I-IV as printed (data the report reads)
  summary        aggregation: cells over seeds, per-class AUC, floors, t-tests
  markdown       report.md sections in the paper's layouts
  calibration_tables  calibration and operating-point tables of classifiers
  plots          ROC curves, reliability diagrams and metric-vs-fraction figures
                 (matplotlib, Agg)
  build          build_report: reads run sets, writes everything
  __main__       python -m mlvicx_jax.report

Reads records with numpy, scipy and matplotlib; nothing here imports JAX.
"""
from mlvicx_jax.report.build import build_report

__all__ = ['build_report']
