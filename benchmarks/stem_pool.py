r"""The stem's max pool alone: models/pooling.py against autodiff of nn.max_pool.

  python benchmarks/stem_pool.py --batch=16 --size=224 --repeats=7

Forward and backward of one view's stem map (batch, size/2, size/2, 64),
with a BatchNorm+ReLU before the pool in the same jit, as in the trunk (XLA
fuses it into the pool's readers; ReLU's zeros give the ties a real map
has). Prints the median time of each, XLA's compiled temporaries, and the
largest difference between the two input gradients.
"""
import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlvicx_jax.models import pooling  # pylint: disable=g-import-not-at-top,wrong-import-position


def xla_max_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


POOLS = {'models/pooling.py': pooling.stem_max_pool, 'nn.max_pool autodiff': xla_max_pool}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--size', type=int, default=224, help='input image size; the map is half')
  p.add_argument('--repeats', type=int, default=7)
  args = p.parse_args()
  rng = np.random.default_rng(0)
  side = args.size // 2
  x = jnp.asarray(rng.standard_normal((args.batch, side, side, 64), np.float32))
  scale = jnp.asarray(rng.standard_normal(64, np.float32))
  cotangent = jnp.asarray(rng.standard_normal((args.batch, (side - 1) // 2 + 1,
                                               (side - 1) // 2 + 1, 64), np.float32))

  def loss(pool, x, scale):
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    return jnp.sum(pool(jax.nn.relu((x - mean) * jax.lax.rsqrt(var + 1e-5) * scale)) * cotangent)

  results = {}
  for name, pool in POOLS.items():
    fn = jax.jit(jax.grad(lambda x, s, pool=pool: loss(pool, x, s), argnums=(0, 1)))
    compiled = fn.lower(x, scale).compile()
    grads = jax.block_until_ready(compiled(x, scale))
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(x, scale))
      times.append(time.perf_counter() - t0)
    results[name] = (float(np.median(times)), compiled.memory_analysis().temp_size_in_bytes,
                     grads[0])
  print(f'{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, map {args.batch}x{side}x{side}x64, '
        f'forward + backward, median of {args.repeats}')
  print('| pool | ms | temp MiB |')
  print('|---|---|---|')
  for name, (median, temp, _) in results.items():
    print(f'| {name} | {median * 1e3:.1f} | {temp / 2**20:.0f} |')
  ours, ref = (results[name][2] for name in POOLS)
  print(f'max |input gradient difference| {float(jnp.max(jnp.abs(ours - ref))):.2e} '
        f'(of max |gradient| {float(jnp.max(jnp.abs(ref))):.2e})')


if __name__ == '__main__':
  main()
