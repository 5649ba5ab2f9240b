"""benchmarks/accelerator.py --quick, as CI runs it: what it writes, and the arithmetic in it.

No timing is asserted; the figures are checked for being there, finite, and
consistent with each other as the definitions say (pairs/s = batch / time,
MFU = FLOPs / time / peak, ...), recomputed here.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, 'benchmarks', 'accelerator.py')


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
  out = tmp_path_factory.mktemp('accelerator')
  done = subprocess.run([sys.executable, SCRIPT, '--quick', f'--out={out}'], cwd=REPO,
                        capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(out / 'accelerator.json') as f:
    result = json.load(f)
  return result, (out / 'accelerator.md').read_text()


def _finite(*values):
  return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_step_rows_hold_finite_figures_that_agree_with_their_definitions(quick):
  result, _ = quick
  assert result['mode'] == 'quick' and result['platform'] == 'cpu'
  assert result['steps'] and all('error' not in r for r in result['steps'])
  peak = result['peaks']['float32']['tflops']
  assert _finite(peak) and peak > 0 and 'measured' in result['peaks']['float32']['source']
  for row in result['steps']:
    assert _finite(row['step_s'], row['gflop_per_step'], row['compiled_peak_mib'],
                   row['loss0'], row['grad_norm0'], row['compile_s'])
    assert row['step_s'] > 0 and row['gflop_per_step'] > 0 and row['compiled_peak_mib'] > 0
    assert row['global_batch'] == row['per_device_batch'] * result['device_count']
    assert math.isclose(row['pairs_per_s'], row['global_batch'] / row['step_s'], rel_tol=1e-9)
    assert math.isclose(row['mfu'], row['gflop_per_step'] / row['step_s'] / 1e3 / peak,
                        rel_tol=1e-9)


def test_correctness_line_compares_the_float32_step_zero_with_the_cpu(quick):
  result, _ = quick
  check = result['correctness']
  first = next(r for r in result['steps'] if r['dtype'] == 'float32')
  assert check['device']['loss'] == first['loss0']
  assert _finite(check['cpu']['loss'], check['cpu']['grad_norm'])
  assert math.isclose(check['device']['loss'], check['cpu']['loss'], rel_tol=1e-5)
  assert math.isclose(check['device']['grad_norm'], check['cpu']['grad_norm'], rel_tol=1e-5)
  assert check['loss_rel_diff'] <= 1e-5


def test_max_batch_search_follows_its_probes(quick):
  result, _ = quick
  search = result['max_batch']
  row = next(r for r in result['steps'] if r['dtype'] == search['dtype'])
  # One measured batch: the line goes through the origin and that point.
  per_example = row['compiled_peak_mib'] / row['per_device_batch']
  assert math.isclose(search['per_example_mib'], per_example, rel_tol=1e-9)
  assert search['predicted'] == int(search['limit_mib'] / per_example) // 8 * 8
  assert 1 <= len(search['probes']) <= 1  # --quick: one compile-only probe
  fitting = [p['per_device_batch'] for p in search['probes'] if p['fits']]
  assert search['largest_fitting'] == max(fitting + [row['per_device_batch']])
  for probe in search['probes']:
    assert probe['fits'] == (probe['compiled_peak_mib'] <= search['limit_mib'])


def test_input_headroom_and_compile_figures(quick):
  result, _ = quick
  feed = result['input']
  assert _finite(feed['host_cpu_ms_per_pair']) and feed['host_cpu_ms_per_pair'] > 0
  assert math.isclose(feed['host_can_feed_pairs_per_s'],
                      feed['host_cores'] * 1000 / feed['host_cpu_ms_per_pair'], rel_tol=1e-9)
  assert math.isclose(feed['headroom'],
                      feed['host_can_feed_pairs_per_s'] / feed['step_consumes_pairs_per_s'],
                      rel_tol=1e-9)
  compiled = result['compile']
  assert _finite(compiled['cold_s'], compiled['warm_s'], compiled['trace_lower_s'])
  assert compiled['entries'] >= 1  # the cold compile wrote the step to the empty cache
  assert result['skipped'] == ['remat: --remat=0']


def test_checkpoint_holds_the_parameters_and_the_momentum(quick):
  import jax  # pylint: disable=g-import-not-at-top
  from mlvicx_jax import models  # pylint: disable=g-import-not-at-top
  result, _ = quick
  model = models.build_model(models.model_config('tiny'))  # --quick's model: configs/nih.py:smoke
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jax.numpy.zeros(
      (2, 96, 96, 3)), train=False))
  count = sum(x.size for x in jax.tree.leaves(shapes['params']))
  saved = result['checkpoint']
  assert saved['parameters'] == count
  # float32 parameters and as many momentum values, of noise: they barely compress.
  assert 1.5 * 4 * count / 2**20 < saved['mib'] < 3 * 4 * count / 2**20
  assert 0 < saved['save_call_s'] <= saved['written_s']


def test_markdown_table_repeats_the_json(quick):
  result, table = quick
  rows = [line for line in table.splitlines() if line.startswith('| ') and '---' not in line]
  header, body = rows[0], rows[1:]
  assert 'MFU' in header and 'pairs/s' in header and 'CPU rows only' in table
  assert len(body) == len(result['steps'])
  for line, row in zip(body, result['steps']):
    cells = [c.strip() for c in line.strip('|').split('|')]
    assert int(cells[0]) == row['per_device_batch'] and cells[1] == row['dtype']
    assert math.isclose(float(cells[3]), row['pairs_per_s'], rel_tol=0.01, abs_tol=0.05)
  assert 'Correctness, float32 step 0' in table and 'Largest per-device batch' in table


def test_peak_table_gives_the_issue_figures_by_device_kind():
  spec = importlib.util.spec_from_file_location('accelerator_benchmark', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  expected = {  # dense bf16 TFLOP/s per chip, from the issue's table
      'NVIDIA H100 80GB HBM3': 989, 'NVIDIA H200': 989, 'NVIDIA A100-SXM4-80GB': 312,
      'TPU v4': 275, 'TPU v5 lite': 197, 'TPU v5': 459, 'TPU v6 lite': 918}
  for kind, tflops in expected.items():
    assert module.device_peak(kind, 'bfloat16')[0] == pytest.approx(tflops, abs=0.5), kind
  assert module.device_peak('NVIDIA H100 PCIe', 'bfloat16')[0] == 756
  assert module.device_peak('cpu', 'float32') == (None, None)
