"""The embedded demo's program path end to end, at seconds scale (configs/demo.py:smoke).

The full demo's claim (pretrained vs random init, with its interval) is
measured by running `configs/demo.py` itself (README); this checks the
program: data made in the workdir before pretraining, pretraining, both
probes, the paired margin, report and summary.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from mlvicx_jax.evaluate import record_files


def test_demo_smoke_writes_summary_and_report(tmp_path):
  workdir = tmp_path / 'demo'
  out = subprocess.run([sys.executable, '-m', 'mlvicx_jax.demo', '--config=configs/demo.py:smoke',
                        f'--workdir={workdir}'], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'), check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  assert (workdir / 'synthetic_nih' / 'tfds' / 'nih').is_dir()
  summary = json.loads((workdir / 'demo_summary.json').read_text())
  assert set(summary['by_label_fraction']) == {'0.3', '1'}
  # The headline numbers are those of the records the probes wrote.
  runs = {name: record_files.load_run_records(str(workdir / 'probe' / name))
          for name in ('pretrained', 'random_init')}
  for name in runs:
    chosen = [r['test']['mean_auc'] for r in runs[name] if r['label_fraction'] == 0.3]
    assert summary[f'{name}_mean_auc'] == pytest.approx(np.mean(chosen), abs=1e-12)
  low, high = summary['margin_ci95']
  assert low <= summary['margin'] <= high
  assert summary['margin'] == pytest.approx(
      summary['pretrained_mean_auc'] - summary['random_init_mean_auc'], abs=1e-9)
  # The random-init encoder got statistics from data, as every random-init row does.
  assert all(r['encoder']['bn_statistics'] == 're-estimated' and r['encoder']['random_init']
             for r in runs['random_init'])
  assert all(r['encoder']['bn_statistics'] == 'checkpoint' for r in runs['pretrained'])
  assert os.path.isfile(summary['report'])
  assert 'random-init' in out.stdout and 'margin [95% CI]' in out.stdout
