r"""End-to-end pretraining pairs per second, aug.on='host' against 'device'.

  python benchmarks/end_to_end.py                       # synthetic NIH, 224 px, batch 16
  python benchmarks/end_to_end.py --steps=12 --workers=0,2

Runs the real program, `python -m mlvicx_jax.main --config=configs/nih.py`,
once per (mode, grain workers) in a fresh workdir on the same synthetic NIH
(stored at 256 px), and reads the pairs/s that the program itself logs in
metrics.jsonl. The first --skip logged steps (compilation, warm-up) are left
out; the median of the rest is printed with its min-max range, beside the
first step's time (compilation included).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mlvicx_jax import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position

_STEPS = flags.DEFINE_integer('steps', 10, 'Training steps per run.')
_SKIP = flags.DEFINE_integer('skip', 2, 'Logged steps left out of the median.')
_BATCH = flags.DEFINE_integer('batch', 16, 'Global batch size.')
_SIZE = flags.DEFINE_integer('image_size', 224, 'View size.')
_IMAGES = flags.DEFINE_integer('num_images', 256, 'Synthetic NIH images.')
_MODES = flags.DEFINE_list('modes', ['host', 'device'], 'aug.on values.')
_WORKERS = flags.DEFINE_list('workers', ['2'], 'grain worker counts.')
_VARIANT = flags.DEFINE_string('variant', '', "configs/nih.py variant ('' = official).")


def run_once(data_dir: str, mode: str, workers: int) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    command = [
        sys.executable, '-m', 'mlvicx_jax.main',
        f'--config={os.path.join(REPO, "configs", "nih.py")}' + (
            f':{_VARIANT.value}' if _VARIANT.value else ''),
        f'--workdir={workdir}', f'--config.data_dir={data_dir}',
        f'--config.num_train_steps={_STEPS.value}', f'--config.global_batch_size={_BATCH.value}',
        f'--config.image_size={_SIZE.value}', f'--config.aug.on={mode}',
        f'--config.worker_count={workers}', '--config.log_every_steps=1',
        f'--config.checkpoint_every_steps={_STEPS.value}',
        '--config.compilation_cache_dir=none']
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode:
      raise SystemExit(f'{mode}: exit {result.returncode}\n{result.stderr[-3000:]}')
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      rows = [json.loads(line) for line in f]
  rates = sorted(r['pairs_per_second'] for r in rows[_SKIP.value:])
  return dict(median=rates[len(rates) // 2], low=rates[0], high=rates[-1],
              first_step_s=_BATCH.value / rows[0]['pairs_per_second'], wall=wall)


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = synthetic.prepare('nih', tmp, _IMAGES.value, image_size=256)
    print(f'\nconfigs/nih.py{":" + _VARIANT.value if _VARIANT.value else ""}, batch '
          f'{_BATCH.value}, {_SIZE.value} px, {_STEPS.value} steps, {os.cpu_count()} CPUs')
    print('| aug.on | grain workers | pairs/s median [min, max] | first step s | wall s |')
    print('|---|---|---|---|---|')
    for mode in _MODES.value:
      for workers in _WORKERS.value:
        r = run_once(data_dir, mode, int(workers))
        print(f'| {mode} | {workers} | {r["median"]:.2f} [{r["low"]:.2f}, {r["high"]:.2f}] | '
              f'{r["first_step_s"]:.1f} | {r["wall"]:.0f} |', flush=True)


if __name__ == '__main__':
  app.run(main)
