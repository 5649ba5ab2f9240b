r"""The context block alone, forward and backward, at the trunk's five map sizes.

  python benchmarks/context_block.py --batch=16 --size=224 --repeats=7

Times the block as the model runs it (mlvicx_jax/models/attention.py, its
hand-written backward pass) and the plain composition differentiated by
jax (flax-free CBAM: means, maxes, a 7x7 convolution), one view, on a
post-ReLU-like input. Per map: the median over `repeats` calls of one jitted
forward+backward, XLA's compiled temporaries, and the largest relative
difference of the two gradients. A whole train step hides these
milliseconds in its noise on a shared 2-core machine; this does not.
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlvicx_jax.models import attention  # pylint: disable=g-import-not-at-top,wrong-import-position


def plain_block(x, fc1, fc2, conv):
  """CBAM the direct way; jax differentiates it."""
  mlp = lambda v: jnp.dot(jax.nn.relu(jnp.dot(v, fc1)), fc2)
  x = x * jax.nn.sigmoid(mlp(jnp.mean(x, (1, 2))) + mlp(jnp.max(x, (1, 2))))[:, None, None, :]
  pooled = jnp.stack([jnp.mean(x, -1), jnp.max(x, -1)], -1)
  logits = jax.lax.conv_general_dilated(pooled, conv, (1, 1), 'SAME',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return x * jax.nn.sigmoid(logits)


def timed(block, args, cotangent, repeats):
  def run(*args):
    out, pull = jax.vjp(block, *args)
    return out, pull(cotangent)
  compiled = jax.jit(run).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    result = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), compiled.memory_analysis().temp_size_in_bytes, result


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--repeats', type=int, default=7)
  args = p.parse_args()
  rng = np.random.default_rng(0)
  side = args.size // 2
  maps = [(side, 64), (side // 2, 64), (side // 4, 128), (side // 8, 256), (side // 16, 512)]
  print(f'{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, batch {args.batch}, one view; '
        f'median of {args.repeats}')
  print('| map | hand-written ms | temp MiB | autodiff ms | temp MiB | gradients max rel diff |')
  print('|---|---|---|---|---|---|')
  totals = [0.0, 0.0]
  for side_, channels in maps:
    shape = (args.batch, side_, side_, channels)
    x = jnp.asarray(np.maximum(rng.standard_normal(shape), 0).astype(np.float32))
    weights = [jnp.asarray(rng.standard_normal(s).astype(np.float32) * 0.1)
               for s in ((channels, channels // 2), (channels // 2, channels), (7, 7, 2, 1))]
    cotangent = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    ours = timed(attention.context_bottleneck, (x, *weights), cotangent, args.repeats)
    plain = timed(plain_block, (x, *weights), cotangent, args.repeats)
    diff = max(float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
               for a, b in zip(jax.tree.leaves(ours[2][1]), jax.tree.leaves(plain[2][1])))
    totals[0] += ours[0]
    totals[1] += plain[0]
    print(f'| {side_}x{side_}x{channels} | {ours[0] * 1e3:.1f} | {ours[1] / 2**20:.0f} '
          f'| {plain[0] * 1e3:.1f} | {plain[1] / 2**20:.0f} | {diff:.1e} |')
  print(f'| all five | {totals[0] * 1e3:.1f} | | {totals[1] * 1e3:.1f} | | |')


if __name__ == '__main__':
  main()
