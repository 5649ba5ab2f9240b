"""Runs two MLVICX train steps with the batch sharded over N devices vs 1 device.

Executed in a subprocess with XLA_FLAGS giving 8 CPU devices; prints JSON with
the largest differences, so the test process's own jax stays single-device.
"""
import functools
import json
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mlvicx_jax import models
from mlvicx_jax import optim
from mlvicx_jax.data import augment
from mlvicx_jax.data import device_augment
from mlvicx_jax.synthetic import phantom
from mlvicx_jax.train import methods
from mlvicx_jax.train.step import TrainState, make_train_step


def run(devices, batches, model, tx, schedule, loss_cfg, init, make_views=None):
  mesh = jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)
  repl, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  state = jax.device_put(init, repl)
  step = jax.jit(make_train_step(model, tx, schedule, methods.build('mlvicx', loss_cfg, model, 0),
                                 make_views),
                 in_shardings=(repl, shard), out_shardings=(repl, repl))
  losses = []
  for batch in batches:
    state, metrics = step(state, jax.device_put(batch, shard))
    losses.append(float(metrics['loss']))
  return losses, jax.device_get(state)


def views_on(devices, batch, make_views):
  mesh = jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)
  batch = jax.device_put(batch, NamedSharding(mesh, P('data')))
  return [np.asarray(v) for v in jax.jit(make_views)(batch['image'], batch['position'])]


def main():
  n, context_blocks = int(sys.argv[1]), sys.argv[2] == 'cbam'
  on_device = sys.argv[3:] == ['device']  # uint8 batches, views made in the step
  cfg = models.model_config('tiny')
  cfg.context_blocks = context_blocks
  model = models.build_model(cfg)
  schedule = optim.warmup_cosine_schedule(optim.scaled_lr(0.2, 16), 1, 10)
  tx = optim.lars(schedule)
  loss_cfg = ml_collections.ConfigDict(dict(sim_coeff=25., std_coeff=25., cov_coeff=1., eps=1e-4,
                                            lam=1.0, use_global=True, use_local=True))
  rng = np.random.default_rng(0)
  batches = [{k: rng.standard_normal((16, 96, 96, 3)).astype(np.float32) for k in ('view1', 'view2')}
             for _ in range(2)]
  make_views, extra = None, {}
  if on_device:
    make_views = functools.partial(device_augment.two_views, seed=0, size=96,
                                   aug=augment.default_augment_config())
    # Synthetic films, not uniform noise: blurred noise views make an ill-conditioned
    # loss whose gradients differ by 0.4% between 1 and 8 devices on some CPUs (AMD EPYC)
    # from summation order alone, while films agree to 3e-6 (measured).
    films = [phantom.render(rng, 128, 128, ()).image for _ in range(32)]
    images = np.round(np.stack(films)[..., None] * 255).astype(np.uint8)
    batches = [{'image': images[16 * i:16 * (i + 1)],
                'position': np.arange(16 * i, 16 * (i + 1), dtype=np.uint32)} for i in range(2)]
    one = views_on(jax.devices()[:1], batches[0], make_views)
    many = views_on(jax.devices()[:n], batches[0], make_views)
    extra['views_max_diff'] = max(float(np.abs(a - b).max()) for a, b in zip(one, many))
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 96, 96, 3)), train=False)
  init = TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                    batch_stats=variables['batch_stats'], opt_state=tx.init(variables['params']))
  loss_1, state_1 = run(jax.devices()[:1], batches, model, tx, schedule, loss_cfg, init,
                        make_views)
  loss_n, state_n = run(jax.devices()[:n], batches, model, tx, schedule, loss_cfg, init,
                        make_views)
  norm = lambda a, b: float(np.sqrt(sum(np.sum((np.asarray(x) - np.asarray(y))**2)
                                         for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))))
  init = jax.device_get(init)
  # Differences between the two runs, relative to how far training moved each tree.
  print(json.dumps({'devices': jax.device_count(), 'loss_1': loss_1, 'loss_n': loss_n,
                    'params_rel': norm(state_1.params, state_n.params) / norm(state_1.params, init.params),
                    'batch_stats_rel': norm(state_1.batch_stats, state_n.batch_stats)
                                       / norm(state_1.batch_stats, init.batch_stats),
                    **extra}))


if __name__ == '__main__':
  main()
