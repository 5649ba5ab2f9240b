"""The embedded demo's program path end to end, at seconds scale (configs/demo.py:smoke).

The full demo's claim (pretrained beats random init) is measured by running
`configs/demo.py` itself (README); this checks the program: data made in the
workdir, pretraining, both probes, report and summary.
"""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_smoke_writes_summary_and_report(tmp_path):
  workdir = tmp_path / 'demo'
  out = subprocess.run([sys.executable, '-m', 'mlvicx_jax.main', '--config=configs/demo.py:smoke',
                        f'--workdir={workdir}'], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'), check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  summary = json.loads((workdir / 'demo_summary.json').read_text())
  for key in ('pretrained_mean_auc', 'random_init_mean_auc', 'wall_seconds'):
    assert isinstance(summary[key], float)
  assert 0.0 <= summary['pretrained_mean_auc'] <= 1.0
  assert summary['margin'] == summary['pretrained_mean_auc'] - summary['random_init_mean_auc']
  assert set(summary['mean_auc_by_label_fraction']) == {'0.3', '1.0'}
  # The headline numbers are those of the records the probes wrote.
  record = json.loads(next((workdir / 'probe' / 'pretrained').glob('*f0.3*seed0*.json')).read_text())
  assert record['test']['mean_auc'] == summary['pretrained_mean_auc']
  assert os.path.isfile(summary['report'])
  assert 'random-init' in out.stdout and 'MLVICX-pretrained' in out.stdout
