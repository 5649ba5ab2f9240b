r"""The two projection heads alone: forward, backward and LARS, against a memory floor.

  python benchmarks/branch_head.py --batch=16 --repeats=9

The multi-level branch's head (configs/nih.py: 512 x 4 x 4 = 8,192 inputs,
then 4096, 4096, 4096) holds 67.1M parameters, six times the ResNet18
trunk; the global head (512 inputs) 35.7M. Both views go through each head
at once, as in the train step, so every weight is used by 2 x batch rows:
too few to make the matmuls compute-bound. Per head this times, with both
views' rows: the forward, forward+backward, and forward+backward+the train
step's LARS update (params and momentum donated, as train/step.py does).

The floor column is what moving the parameters alone costs at this
machine's streaming rate (measured here by an in-place update of arrays of
the same size): ten parameter-sized transfers per step, the fewest that
XLA's one-pass-per-fusion structure allows. The forward reads the weights;
the backward reads them again and writes their gradient; LARS reads both
for its two norms, then reads weights, gradient and momentum and writes
weights and momentum.
"""
import argparse
import functools
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlvicx_jax import config_files  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.models import heads  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.train import loop  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSES = 10  # parameter-sized transfers per step; see the module docstring


def timed(fn, args, repeats, donated=False):
  """Median seconds and page faults per call; with `donated`, fn returns new
  values for all its arguments but the last."""
  times, faults = [], []
  out = fn(*args)
  jax.block_until_ready(out)
  for _ in range(repeats):
    if donated:
      args = out[:len(args) - 1] + args[-1:]
    before, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  return float(np.median(times)), int(np.median(faults))


def streaming_gb_per_s(count, repeats):
  """GB/s of an in-place momentum update (3 arrays read, 2 written) of `count` floats."""
  update = jax.jit(lambda w, m, g: (w - 0.1 * (0.9 * m + g), 0.9 * m + g),
                   donate_argnums=(0, 1))
  args = tuple(jnp.full((count,), v, jnp.float32) for v in (1.0, 0.5, 0.25))
  seconds, _ = timed(update, args, repeats, donated=True)
  return 5 * 4 * count / seconds / 1e9


def head_rows(name, widths, in_features, config, batch, repeats, bandwidth):
  head = heads.ProjectionHead(tuple(widths))
  x = jax.random.normal(jax.random.key(0), (2, batch, in_features), jnp.float32)
  variables = head.init(jax.random.key(1), x)
  params, stats = variables['params'], variables['batch_stats']
  count = sum(p.size for p in jax.tree.leaves(params))
  tx, _ = loop.make_optimizer(config, steps_per_epoch=1000, total_steps=100_000)

  def loss(params, stats, x):
    y, new = head.apply({'params': params, 'batch_stats': stats}, x, mutable=['batch_stats'])
    return jnp.sum(y[0] * y[1]) / y[0].size, new['batch_stats']

  forward = jax.jit(lambda p, s, x: loss(p, s, x)[0])
  gradients = jax.jit(jax.grad(lambda p, s, x: loss(p, s, x)[0]))

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def update(params, stats, opt_state, x):
    grads, stats = jax.grad(loss, has_aux=True)(params, stats, x)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state

  fwd, _ = timed(forward, (params, stats, x), repeats)
  bwd, _ = timed(gradients, (params, stats, x), repeats)
  full, faults = timed(update, (params, stats, tx.init(params), x), repeats, donated=True)
  floor = PASSES * 4 * count / (bandwidth * 1e9)
  return (f'| {name} | {count / 1e6:.1f}M | {fwd * 1e3:.1f} | {bwd * 1e3:.1f} | {full * 1e3:.1f} '
          f'| {(full - bwd) * 1e3:.1f} | {floor * 1e3:.1f} | {faults:,} |')


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=16, help='examples per view')
  p.add_argument('--repeats', type=int, default=9)
  p.add_argument('--variant', default='', help="configs/nih.py variant ('' = official)")
  args = p.parse_args()
  config = config_files.load_file(os.path.join(REPO, 'configs', 'nih.py'), args.variant)
  m = config.model
  multilevel_in = m.multilevel_channels * m.multilevel_pool**2
  bandwidth = streaming_gb_per_s(sum(a * b for a, b in zip(
      (multilevel_in,) + tuple(m.multilevel_head[:-1]), m.multilevel_head)), args.repeats)
  rows = [head_rows('multi-level head', m.multilevel_head, multilevel_in, config, args.batch,
                    args.repeats, bandwidth),
          head_rows('global head', m.global_head, 512, config, args.batch, args.repeats,
                    bandwidth)]
  print(f"\n{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, 2 views x batch "
        f"{args.batch}, float32, median of {args.repeats}; streaming rate {bandwidth:.1f} GB/s; "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
  print('| head | parameters | forward ms | forward+backward ms | + LARS ms | LARS alone ms '
        f'| floor ms ({PASSES} transfers) | page faults/step |')
  print('|---|---|---|---|---|---|---|---|')
  print('\n'.join(rows))


if __name__ == '__main__':
  main()
