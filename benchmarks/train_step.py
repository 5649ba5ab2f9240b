r"""Seconds per MLVICX pretraining step: this JAX step beside the official PyTorch one.

  python benchmarks/train_step.py --batch=16 --size=224 --steps=3

Also times the device augmentation alone (two views from uint8 images stored
at --stored px, as aug.on='device' runs inside the step), and reports the
step's FLOPs from XLA's cost analysis with the rate achieved.

The PyTorch side follows the official code's structure: two views through
one encoder, the multi-level branch resized to 64x64 before its 1x1 convs,
VICReg on z and on m, and VICReg's LARS. Both run in this process, on the
same inputs shape, and the ratio is printed.
"""
import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))

from mlvicx_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import optim  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.data import augment  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.data import device_augment  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.train import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.train.step import TrainState, make_train_step  # pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position


def jax_step_times(args):
  cfg = models.model_config(args.model)
  cfg.dtype = args.dtype
  cfg.multilevel_impl = args.impl
  model = models.build_model(cfg)
  schedule = optim.warmup_cosine_schedule(0.2 * args.batch / 256, 10, 1000)
  tx = optim.lars(schedule)
  loss_cfg = ml_collections.ConfigDict(dict(sim_coeff=25., std_coeff=25., cov_coeff=1., eps=1e-4,
                                            lam=1.0, use_global=True, use_local=True))
  rng = np.random.default_rng(0)
  batch = {k: jnp.asarray(rng.standard_normal((args.batch, args.size, args.size, 3), np.float32))
           for k in ('view1', 'view2')}
  variables = jax.jit(lambda r: model.init(r, batch['view1'][:2], train=False))(jax.random.PRNGKey(0))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                     batch_stats=variables['batch_stats'], opt_state=tx.init(variables['params']))
  step = jax.jit(make_train_step(model, tx, schedule, methods.build('mlvicx', loss_cfg, model, 1000)), donate_argnums=0)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', float('nan')))
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  return compile_s, float(np.median(times)), float(metrics['loss']), flops


def augment_times(args):
  """Median seconds of the two-view device augmentation of one batch."""
  images = np.random.default_rng(0).integers(0, 256, (args.batch, args.stored, args.stored, 1),
                                             np.uint8)
  positions = np.arange(args.batch, dtype=np.uint32)
  make = jax.jit(functools.partial(device_augment.two_views, seed=0,
                                   aug=augment.default_augment_config(), size=args.size))
  jax.block_until_ready(make(images, positions))
  times = []
  for i in range(args.steps):
    t0 = time.perf_counter()
    jax.block_until_ready(make(images, positions + (i + 1) * args.batch))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def torch_step_times(args):
  import torch  # pylint: disable=g-import-not-at-top
  import torch_reference as tr  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count())
  model = tr.MLVICXTorch()
  model.train()

  def vicreg(x, y):
    x, y = x.flatten(1), y.flatten(1)
    n, d = x.shape
    inv = torch.nn.functional.mse_loss(x, y)
    std = lambda t: torch.sqrt(t.var(dim=0) + 1e-4)
    var = torch.relu(1 - std(x)).mean() / 2 + torch.relu(1 - std(y)).mean() / 2
    def off(t):
      t = t - t.mean(0)
      c = t.T @ t / (n - 1)
      return (c.pow(2).sum() - c.diagonal().pow(2).sum()) / d
    return 25 * inv + 25 * var + off(x) + off(y)

  params = list(model.parameters())
  momenta = [torch.zeros_like(p) for p in params]

  @torch.no_grad()
  def lars_step(lr=0.0125, wd=1e-6, eta=1e-3, momentum=0.9):
    for p, mu in zip(params, momenta):
      g = p.grad
      if p.ndim != 1:
        g = g.add(p, alpha=wd)
        pn, gn = torch.norm(p), torch.norm(g)
        q = torch.where((pn > 0) & (gn > 0), eta * pn / gn, torch.ones_like(pn))
        g = g.mul(q)
      mu.mul_(momentum).add_(g)
      p.add_(mu, alpha=-lr)

  x1 = torch.randn(args.batch, 3, args.size, args.size)
  x2 = torch.randn(args.batch, 3, args.size, args.size)

  def step():
    z1, m1 = model(x1)
    z2, m2 = model(x2)
    loss = vicreg(z1, z2) + vicreg(m1, m2)
    model.zero_grad(set_to_none=True)
    loss.backward()
    lars_step()
    return float(loss.detach())

  step()
  times = []
  for _ in range(args.torch_steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--size', type=int, default=224)
  p.add_argument('--dtype', default='float32', choices=sorted(models.DTYPES))
  p.add_argument('--model', default='official', choices=['official', 'paper', 'tiny'])
  p.add_argument('--impl', default='folded', choices=['folded', 'naive'])
  p.add_argument('--stored', type=int, default=256, help='stored image size (augmentation)')
  p.add_argument('--steps', type=int, default=3, help='timed JAX steps (median reported)')
  p.add_argument('--torch_steps', type=int, default=2, help='timed PyTorch steps; 0 skips PyTorch')
  args = p.parse_args()
  compile_s, jax_s, loss, flops = jax_step_times(args)
  aug_s = augment_times(args)
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}, batch {args.batch}, '
        f'{args.size}px, {args.dtype}, multi-level branch {args.impl}')
  print('| step | seconds/step | pairs/s | compile s |')
  print('|---|---|---|---|')
  print(f'| JAX (this project) | {jax_s:.2f} | {args.batch / jax_s:.2f} | {compile_s:.1f} |')
  print(f'| JAX device augmentation alone ({args.stored} px uint8 -> two {args.size} px views) '
        f'| {aug_s:.3f} | {args.batch / aug_s:.0f} | - |')
  print(f'XLA cost analysis: {flops / 1e9:.1f} GFLOP per step, {flops / jax_s / 1e9:.1f} '
        f'GFLOP/s achieved; augmentation {100 * aug_s / jax_s:.1f}% of a step')
  if args.torch_steps > 0:
    torch_s = torch_step_times(args)
    print(f'| PyTorch (official structure) | {torch_s:.2f} | {args.batch / torch_s:.2f} | - |')
    print(f'speed-up: {torch_s / jax_s:.2f}x (first JAX loss {loss:.3f})')


if __name__ == '__main__':
  main()
