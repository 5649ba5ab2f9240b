r"""What the context blocks and the multi-level branch cost per train step, in one process.

  python benchmarks/context_overhead.py --batch=16 --size=224 --rounds=5

Builds four train steps of the default model as train/loop.py builds them
(LARS, VICReg terms, views given, as with aug.on='host'): full MLVICX,
without context blocks, without the multi-level branch (and its loss term),
and without both. The steps run round-robin, one of each per round, so a
load change on a shared machine hits every variant alike, the order reversed
every other round: the first step of a round ran 0.3-0.6 s slower than the
same executable later in the round on this 2-core machine, which a fixed
order charges to the first variant (full MLVICX). Per variant: the
median step and its ratio to the last variant (the step without both), the
process's CPU time, XLA's FLOPs, the compiled temporaries and the page
faults per step (XLA's CPU runtime maps its temporaries afresh each step,
unless glibc's allocator is told to keep freed memory: the GLIBC_TUNABLES
line in docs/benchmarks.md, which the header prints). The issue's target
is full / neither <= 1.08.

`--views=joint,separate` also builds every variant with the views as two
whole calls of the model, heads included, as the step did before its heads
took both views at once (docs/benchmarks.md).
"""
import argparse
import os
import resource
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_step  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.train import methods  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = (('full MLVICX', {}),
            ('no context blocks', {'context_blocks': False}),
            ('no multi-level branch', {'multilevel': False}),
            ('neither', {'context_blocks': False, 'multilevel': False}))


def separate_passes(model, params, batch_stats, view1, view2):
  """The two views as two whole calls of the model (heads included): the
  forward before the heads took both views at once."""
  out1, new = model.apply({'params': params, 'batch_stats': batch_stats}, view1,
                          train=True, mutable=['batch_stats'])
  out2, new = model.apply({'params': params, 'batch_stats': new['batch_stats']}, view2,
                          train=True, mutable=['batch_stats'])
  return out1, out2, new['batch_stats']


TWO_VIEWS = {'joint': methods.forward_two_views, 'separate': separate_passes}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--rounds', type=int, default=5, help='timed steps per variant (median)')
  p.add_argument('--variant', default='', help="configs/nih.py variant ('' = official)")
  p.add_argument('--dtype', default='float32')
  p.add_argument('--only', default='', help="comma-separated variant numbers (1-4), e.g. '3,4'; "
                 "the last one listed is the ratios' base")
  p.add_argument('--views', default='joint',
                 help="comma-separated: 'joint' (train/methods.py: the heads take both views "
                 "at once) and/or 'separate' (two whole calls of the model)")
  args = p.parse_args()
  chosen = [VARIANTS[int(i) - 1] for i in args.only.split(',')] if args.only else VARIANTS
  modes = args.views.split(',')
  runs = []
  for mode, (name, fields) in [(m, v) for m in modes for v in chosen]:
    methods.forward_two_views = TWO_VIEWS[mode]  # read when the step is traced
    name = name if len(modes) == 1 else f'{name}, views {mode}'
    config = bench_step.pretraining_config(args.variant, args.size, args.batch, args.dtype,
                                            **fields)
    step = bench_step.Step(config, stored_size=args.size, device_views=False)
    compiled, compile_s = step.compile()
    state, batch = step.state(), step.batch()
    state, metrics = compiled(state, batch, step.scale)  # warm-up
    jax.block_until_ready(metrics)
    runs.append(dict(name=name, compiled=compiled, state=state, batch=batch, step=step,
                     flops=bench_step.compiled_flops(compiled), compile_s=compile_s, times=[],
                     cpu=[], faults=[],
                     temp=compiled.memory_analysis().temp_size_in_bytes))
    print(f"compiled {name} in {compile_s:.1f} s; step-0 loss {float(metrics['loss']):.6f}",
          file=sys.stderr, flush=True)
  load_before = os.getloadavg()[0]
  for round_index in range(args.rounds):
    for run in runs if round_index % 2 == 0 else runs[::-1]:
      before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
      run['state'], metrics = run['compiled'](run['state'], run['batch'], run['step'].scale)
      jax.block_until_ready(metrics)
      run['times'].append(time.perf_counter() - t0)
      after = resource.getrusage(resource.RUSAGE_SELF)
      run['cpu'].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
      run['faults'].append(after.ru_minflt - before.ru_minflt)
  base = float(np.median(runs[-1]['times']))  # the last variant: 'neither' by default
  print(f"\n{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, batch {args.batch}, "
        f"{args.size} px, {args.dtype}, median of {args.rounds} round-robin steps "
        "(order reversed every other round); "
        f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
  base_cpu = float(np.median(runs[-1]['cpu']))
  print('| variant | s/step [min, max] | vs last | CPU s/step | vs last | GFLOP (XLA) '
        '| GFLOP/s | temp MiB | page faults/step |')
  print('|---|---|---|---|---|---|---|---|---|')
  for run in runs:
    median, cpu = float(np.median(run['times'])), float(np.median(run['cpu']))
    print(f"| {run['name']} | {median:.2f} [{min(run['times']):.2f}, {max(run['times']):.2f}] "
          f"| {median / base:.3f}x | {cpu:.2f} | {cpu / base_cpu:.3f}x | {run['flops'] / 1e9:.1f} "
          f"| {run['flops'] / median / 1e9:.0f} | {run['temp'] / 2**20:.0f} "
          f"| {int(np.median(run['faults'])):,} |")
  if len(chosen) == len(VARIANTS):
    for i, mode in enumerate(modes):
      full, neither = runs[i * len(VARIANTS)], runs[(i + 1) * len(VARIANTS) - 1]
      ratio = float(np.median(full['times'])) / float(np.median(neither['times']))
      print(f"views {mode}: full / neither: {ratio:.3f}x "
            f"(target <= 1.08: {'met' if ratio <= 1.08 else 'not met'})")


if __name__ == '__main__':
  main()
