r"""What a GPU or TPU (or this CPU) does with the MLVICX train step, in one command.

  python benchmarks/accelerator.py --out=/tmp/accel          # full: 224 px, batches 64-256
  python benchmarks/accelerator.py --quick --out=/tmp/accel  # CI: tiny model, 96 px, < 1 min

On every device it finds, with the step built as train/loop.py builds it
(configs/nih.py, make_optimizer, methods, the data mesh, device augmentation
from uint8 images, donation), it measures: step time and pairs/s per
per-device batch and dtype; MFU (XLA's cost-analysis FLOPs / step time /
the device's peak, PEAKS below; on CPU a measured matmul rate); peak memory
(compiled memory analysis, and the device's own statistics where it keeps
them) and the largest per-device batch that fits (a bounded search, compile
only); remat 'none' vs 'blocks'; input headroom (the host CPU the device
path spends per pair, from the real loader on synthetic NIH); compile time
with an empty and a filled persistent cache; and a correctness line (the
float32 step-0 loss and gradient norm on the device and on the CPU).
It writes OUT/accelerator.json and OUT/accelerator.md.
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from accelerator_report import markdown  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench_step import (Step, compiled_flops, compiled_peak_bytes, device_memory,  # pylint: disable=g-import-not-at-top,wrong-import-position
                        memory_limit, pretraining_config, time_steps)
from mlvicx_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.train import loop  # pylint: disable=g-import-not-at-top,wrong-import-position

# Dense peak TFLOP/s per chip, by the matmul precision a dtype runs at.
# float32 on NVIDIA GPUs: XLA's default precision lets Ampere and later use
# TF32 for float32 matmuls and convolutions, so the TF32 peak is the ceiling;
# on TPUs default precision runs float32 matmuls in bfloat16 passes (the
# bfloat16 peak). Sources: NVIDIA H100 and H200 product briefs (SXM: 989
# bf16, 495 TF32, 67 FP32), A100 datasheet (312 bf16, 156 TF32, 19.5 FP32),
# Google Cloud TPU system architecture pages (per chip, bf16: v4 275, v5e 197,
# v5p 459, v6e 918). Matched in order against device_kind.
PEAKS = (
    ('H200', {'bfloat16': 989.0, 'float32': 494.5}, 'NVIDIA H200 SXM product brief'),
    ('H100 PCIe', {'bfloat16': 756.0, 'float32': 378.0}, 'NVIDIA H100 PCIe datasheet'),
    ('H100', {'bfloat16': 989.0, 'float32': 494.5}, 'NVIDIA H100 SXM datasheet'),
    ('A100', {'bfloat16': 312.0, 'float32': 156.0}, 'NVIDIA A100 datasheet'),
    ('TPU v4', {'bfloat16': 275.0, 'float32': 275.0}, 'Cloud TPU v4 docs'),
    ('TPU v5 lite', {'bfloat16': 197.0, 'float32': 197.0}, 'Cloud TPU v5e docs'),
    ('TPU v5e', {'bfloat16': 197.0, 'float32': 197.0}, 'Cloud TPU v5e docs'),
    ('TPU v5', {'bfloat16': 459.0, 'float32': 459.0}, 'Cloud TPU v5p docs'),
    ('TPU v6', {'bfloat16': 918.0, 'float32': 918.0}, 'Cloud TPU v6e docs'),
)
RESOURCE_EXHAUSTED = 'RESOURCE_EXHAUSTED'


def device_peak(device_kind: str, dtype: str):
  """(TFLOP/s, source) of the first PEAKS row whose key is in device_kind; (None, None)."""
  for key, peaks, source in PEAKS:
    if key.lower() in device_kind.lower():
      return peaks[dtype], source
  return None, None


def measured_matmul_tflops(dtype: str, size: int = 2048, repeats: int = 3) -> float:
  """This machine's rate on one large square matmul: the CPU's practical peak."""
  a = jnp.ones((size, size), models.DTYPES[dtype])
  matmul = jax.jit(lambda x: x @ x)
  jax.block_until_ready(matmul(a))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(matmul(a))
    times.append(time.perf_counter() - t0)
  return 2 * size**3 / float(np.median(times)) / 1e12


def is_oom(error: Exception) -> bool:
  return RESOURCE_EXHAUSTED in str(error) or 'Out of memory' in str(error)


def measure_step(args, batch: int, dtype: str, out: dict, on_compiled=None):
  """One row: compile, FLOPs, memory and step time at a per-device batch and dtype.

  Returns (row, step). `on_compiled(row)` runs once the compiled figures are in.
  """
  row = {'per_device_batch': batch, 'global_batch': batch * jax.device_count(), 'dtype': dtype}
  config = pretraining_config(args.variant, args.image_size, batch, dtype)
  step = Step(config, args.stored_size)
  try:
    t0 = time.perf_counter()
    lowered = step.lower()
    row['lower_s'] = time.perf_counter() - t0
    compiled = lowered.compile()
    row['compile_s'] = time.perf_counter() - t0
    row['gflop_per_step'] = compiled_flops(compiled) / 1e9
    row['compiled_peak_mib'] = compiled_peak_bytes(compiled) / 2**20
    if on_compiled is not None:
      on_compiled(row)
    if compiled_peak_bytes(compiled) > memory_limit():  # never run into the host's OOM killer
      row['error'] = f"does not fit: {row['compiled_peak_mib']:.0f} MiB compiled"
      return row, step
    row['step_s'], row['loss0'], row['grad_norm0'] = time_steps(compiled, step, args.steps)
  except Exception as e:  # pylint: disable=broad-except
    if not is_oom(e):
      raise
    row['error'] = 'out of memory'
    return row, step
  row['device_peak_mib'] = (device_memory()[1] or 0) / 2**20 or None
  row['pairs_per_s'] = row['global_batch'] / row['step_s']
  peak = out['peaks'][dtype]['tflops']
  row['mfu'] = row['gflop_per_step'] / row['step_s'] / 1e3 / peak if peak else None
  return row, step


def warm_compile(step: Step) -> dict:
  """The same program again, in-memory caches cleared: XLA's compile reads the persistent cache."""
  jax.clear_caches()
  t0 = time.perf_counter()
  lowered = step.lower()
  t1 = time.perf_counter()
  lowered.compile()
  return {'warm_trace_lower_s': t1 - t0, 'warm_s': time.perf_counter() - t1}


def max_batch_search(args, rows, dtype: str) -> dict:
  """Largest per-device batch whose compiled footprint fits, in at most args.max_batch_probes
  compiles: a line through the measured (batch, bytes) pairs predicts it, probes confirm."""
  fitted = sorted((r['per_device_batch'], r['compiled_peak_mib'] * 2**20) for r in rows
                  if r['dtype'] == dtype and 'error' not in r)
  limit = 0.95 * memory_limit()
  result = {'dtype': dtype, 'limit_mib': limit / 2**20, 'probes': []}
  if not fitted:
    return dict(result, skipped='no batch of this dtype ran')
  (b0, m0), (b1, m1) = fitted[0], fitted[-1]
  per_example = (m1 - m0) / (b1 - b0) if b1 > b0 else m1 / b1
  fixed = m1 - per_example * b1
  predicted = int((limit - fixed) / per_example) // 8 * 8
  result.update(per_example_mib=per_example / 2**20, fixed_mib=fixed / 2**20, predicted=predicted)
  low, high = b1, None  # largest known to fit, smallest known not to
  probe = max(predicted, b1 + 8)
  for _ in range(args.max_batch_probes):
    config = pretraining_config(args.variant, args.image_size, probe, dtype)
    compiled, _ = Step(config, args.stored_size).compile()
    used = compiled_peak_bytes(compiled)
    result['probes'].append({'per_device_batch': probe, 'compiled_peak_mib': used / 2**20,
                             'fits': used <= limit})
    if used <= limit:
      low = probe
    else:
      high = probe
    # Above a fit by an eighth (is the boundary close?), else halfway down.
    probe = low + max(8, low // 8 // 8 * 8) if high is None else (low + high) // 16 * 8
    if probe <= low or (high is not None and probe >= high):
      break
  result.update(largest_fitting=low, smallest_not_fitting=high)
  return result


def remat_comparison(args, batch: int, dtype: str) -> dict:
  """Compiled footprint and step time with model.remat 'none' and 'blocks'."""
  out = {'per_device_batch': batch, 'dtype': dtype}
  for remat in ('none', 'blocks'):
    config = pretraining_config(args.variant, args.image_size, batch, dtype, remat=remat)
    step = Step(config, args.stored_size)
    compiled, _ = step.compile()
    m = compiled.memory_analysis()
    out[remat] = {'compiled_peak_mib': compiled_peak_bytes(compiled) / 2**20,
                  'temp_mib': m.temp_size_in_bytes / 2**20}
    if args.remat_steps:
      out[remat]['step_s'] = time_steps(compiled, step, args.remat_steps)[0]
  return out


def input_headroom(args, pairs_per_s_per_host: float) -> dict:
  """Host CPU per pair of the device path (decode only; the step makes the views), from the
  real loader on synthetic NIH, and how many pairs/s this host's cores could feed."""
  from mlvicx_jax import synthetic  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.data import augment, pipelines, prepare  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    raw, data_dir = os.path.join(tmp, 'raw'), os.path.join(tmp, 'out')
    synthetic.generate('nih', raw, args.input_images, seed=0, image_size=args.stored_size)
    prepare.prepare('nih', raw, data_dir, image_size=args.stored_size)
    aug = augment.default_augment_config()
    aug.on = 'device'
    batch = args.input_batch
    iterator = iter(pipelines.pretrain_loader(
        data_dir, 'nih', split='train', image_size=args.image_size, global_batch_size=batch,
        seed=0, worker_count=0, aug=aug, shard_index=0, shard_count=1))
    next(iterator)
    cpu0 = time.process_time()  # this process's CPU (no grain workers: worker_count=0)
    for _ in range(args.input_batches):
      next(iterator)
    cpu_ms = 1000 * (time.process_time() - cpu0) / (args.input_batches * batch)
  cores = os.cpu_count()
  feed = cores * 1000 / cpu_ms
  return {'host_cpu_ms_per_pair': cpu_ms, 'host_cores': cores, 'host_can_feed_pairs_per_s': feed,
          'step_consumes_pairs_per_s': pairs_per_s_per_host,
          'headroom': feed / pairs_per_s_per_host if pairs_per_s_per_host else None,
          'stored_size': args.stored_size}


def checkpoint_write(args) -> dict:
  """Bytes and seconds of one checkpoint of an initial-size state (the loop's manager and
  items, less the input iterator's few bytes): the call the loop blocks on with async saves,
  then until the files are written."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from mlvicx_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import checkpointing  # pylint: disable=g-import-not-at-top
  config = pretraining_config(args.variant, args.image_size, 1, 'float32')
  state = Step(config, args.stored_size).state()
  # A trained run's momentum is dense noise, not the initial zeros that compress to nothing.
  leaves, tree = jax.tree.flatten(state.opt_state)
  keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
  state = state.replace(opt_state=jax.tree.unflatten(tree, [
      jax.random.normal(k, x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
      for k, x in zip(keys, leaves)]))
  jax.block_until_ready(state)
  with tempfile.TemporaryDirectory() as workdir:
    mngr = checkpointing.manager(workdir, config)
    t0 = time.perf_counter()
    mngr.save(0, args=ocp.args.Composite(**{
        checkpoint.MODEL: ocp.args.StandardSave({'params': state.params,
                                                 'batch_stats': state.batch_stats}),
        checkpoint.META: ocp.args.JsonSave({'step': 0}),
        checkpoint.TRAIN: ocp.args.StandardSave(checkpointing.train_item(state))}))
    blocking = time.perf_counter() - t0
    mngr.wait_until_finished()
    total = time.perf_counter() - t0
    mngr.close()
    size = sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(workdir) for f in files)
  params = sum(x.size for x in jax.tree.leaves(state.params))
  return {'mib': size / 2**20, 'parameters': int(params), 'save_call_s': blocking,
          'written_s': total, 'async': bool(config.async_checkpointing)}


def correctness(args, rows) -> dict:
  """The float32 step-0 loss and gradient norm on the devices (the first float32 row) and
  the same step, same inputs and initial state, on one CPU device."""
  row = next((r for r in rows if r['dtype'] == 'float32'), None)
  if row is None:
    return {'skipped': 'no float32 row ran'}
  results = {'global_batch': row['global_batch'],
             'device': {'loss': row['loss0'], 'grad_norm': row['grad_norm0']}}
  if jax.default_backend() == 'cpu':
    results['cpu'] = dict(results['device'], note='the devices are this CPU: the same run')
  else:
    config = pretraining_config(args.variant, args.image_size, row['per_device_batch'], 'float32')
    cpu_mesh = jax.sharding.Mesh(np.array(jax.devices('cpu')[:1]), (loop.DATA_AXIS,))
    step = Step(config, args.stored_size, mesh=cpu_mesh)
    _, loss, norm = time_steps(step.compile()[0], step, 0)
    results['cpu'] = {'loss': loss, 'grad_norm': norm}
  d, c = results['device'], results['cpu']
  results['loss_rel_diff'] = abs(d['loss'] - c['loss']) / abs(c['loss'])
  results['grad_norm_rel_diff'] = abs(d['grad_norm'] - c['grad_norm']) / abs(c['grad_norm'])
  return results


PRESETS = {
    'full': dict(variant='', image_size=224, stored_size=256, batches='64,128,256',
                 dtypes='float32,bfloat16', steps=5, max_batch_probes=2, remat=1, remat_steps=2,
                 input_images=256, input_batch=64, input_batches=20),
    # CI: the tiny model at 96 px (XLA's CPU convolutions crawl on smaller maps),
    # one dtype and batch, one compile-only probe; remat is left to the full run.
    'quick': dict(variant='smoke', image_size=96, stored_size=112, batches='4',
                  dtypes='float32', steps=1, max_batch_probes=1, remat=0, remat_steps=0,
                  input_images=24, input_batch=8, input_batches=8),
}


def peaks(dtypes) -> dict:
  kind = jax.devices()[0].device_kind
  out = {}
  for dtype in dtypes:
    tflops, source = device_peak(kind, dtype)
    if tflops is None and jax.default_backend() == 'cpu':
      tflops, source = measured_matmul_tflops(dtype), 'measured: one 2048^3 matmul on this CPU'
    out[dtype] = {'tflops': tflops, 'source': source or f'no peak known for {kind!r}'}
  return out


def run(args) -> dict:
  from mlvicx_jax.train import compile_cache  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  over_budget = lambda: time.perf_counter() - start > args.budget_s
  dtypes = args.dtypes.split(',')
  out = {'mode': args.mode, 'command': ' '.join(sys.argv), 'date': time.strftime('%Y-%m-%d'),
         'jax': jax.__version__, 'platform': jax.default_backend(),
         'device_kind': jax.devices()[0].device_kind, 'device_count': jax.device_count(),
         'process_count': jax.process_count(), 'host_cores': os.cpu_count(),
         'model': args.variant or 'official', 'image_size': args.image_size,
         'peaks': peaks(dtypes), 'compile': {}, 'steps': [], 'skipped': []}
  previous = compile_cache.current_dir()
  pool = concurrent.futures.ThreadPoolExecutor(1)
  probe = {}

  def start_probe(row):  # --quick: the compile-only probes overlap the timed steps
    if args.mode == 'quick' and row['dtype'] == dtypes[-1] and not probe:
      probe['max_batch'] = pool.submit(max_batch_search, args, [dict(row)], dtypes[-1])

  cache = tempfile.mkdtemp(prefix='mlvicx_accelerator_cache_')
  first_step = None
  for dtype in dtypes:
    for batch in sorted(int(b) for b in args.batches.split(',')):
      if over_budget():
        out['skipped'].append(f'step {dtype} batch {batch}: time budget')
        continue
      if first_step is None:  # an empty cache: this compile is cold
        compile_cache.enable(cache)
      row, step = measure_step(args, batch, dtype, out, start_probe)
      if first_step is None:
        first_step = step
        compile_cache.enable(previous)  # the other programs go to the usual cache, if any
        out['compile'] = {'trace_lower_s': row['lower_s'], 'cold_s': row['compile_s'] - row['lower_s'],
                          'entries': len(os.listdir(cache))}
      out['steps'].append(row)
      print(json.dumps(row), file=sys.stderr, flush=True)
      if 'error' in row:
        break
  ok = [r for r in out['steps'] if 'error' not in r]
  best = max(ok, key=lambda r: r['pairs_per_s'], default=None)
  per_host = best['pairs_per_s'] * jax.local_device_count() / jax.device_count() if best else 0.
  t0 = time.perf_counter()
  out['input'] = input_headroom(args, per_host)
  out['seconds'] = {'steps': t0 - start, 'input': time.perf_counter() - t0}
  for name, part in (('correctness', lambda: correctness(args, ok)),
                     ('checkpoint', lambda: checkpoint_write(args)),
                     ('max_batch', lambda: max_batch_search(args, ok, dtypes[-1])),
                     ('remat', lambda: remat_comparison(
                         args, max((r['per_device_batch'] for r in ok if r['dtype'] == dtypes[-1]),
                                   default=int(args.batches.split(',')[0])), dtypes[-1]))):
    if name == 'remat' and not args.remat:
      out['skipped'].append('remat: --remat=0')
    elif over_budget():
      out['skipped'].append(f'{name}: time budget')
    else:
      t0 = time.perf_counter()
      out[name] = probe[name].result() if name in probe else part()
      out['seconds'][name] = time.perf_counter() - t0
  pool.shutdown()
  if first_step is not None:
    compile_cache.enable(cache)
    out['compile'].update(warm_compile(first_step))
    compile_cache.enable(previous)
  shutil.rmtree(cache, ignore_errors=True)
  out['total_s'] = time.perf_counter() - start
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', required=True, help='folder for accelerator.json and accelerator.md')
  p.add_argument('--quick', action='store_true', help='the CI preset (tiny model, one step)')
  p.add_argument('--budget_s', type=float, default=480.0,
                 help='skip what is left (recorded) once this much time has passed')
  for key, value in PRESETS['full'].items():
    p.add_argument(f'--{key}', type=type(value), default=None,
                   help=f"full: {value!r}, quick: {PRESETS['quick'][key]!r}")
  args = p.parse_args()
  args.mode = 'quick' if args.quick else 'full'
  for key, value in PRESETS[args.mode].items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  out = run(args)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'accelerator.json'), 'w') as f:
    json.dump(out, f, indent=1)
  table = markdown(out)
  with open(os.path.join(args.out, 'accelerator.md'), 'w') as f:
    f.write(table)
  print(table)


if __name__ == '__main__':
  main()
