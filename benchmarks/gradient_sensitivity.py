r"""How much the step-0 MLVICX gradient moves under rounding-level changes.

  python benchmarks/gradient_sensitivity.py --batch=16 --size=224

The loss gradient of the default model at initialisation (train mode, two
random views) three ways: as the model computes it, with the context blocks
differentiated by jax instead of their hand-written backward pass (the same
function up to float rounding, benchmarks/context_block.py), and as the
model computes it with view 1 scaled by 1 + 1e-7. Prints the global relative
difference |g - g'| / |g| of each against the first: two runs or two
releases whose gradient norms differ by about as much as the perturbed
input does are not evidence of a defect.
"""
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from context_block import plain_block  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import config_files  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.models import attention  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.train import methods  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def relative(a, b) -> float:
  num = sum(float(jnp.sum((x.astype(jnp.float64) - y) ** 2)) for x, y in
            zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  return (num / sum(float(jnp.sum(y.astype(jnp.float64) ** 2)) for y in jax.tree.leaves(b))) ** 0.5


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--size', type=int, default=224)
  args = p.parse_args()
  config = config_files.load_file(os.path.join(REPO, 'configs', 'nih.py'), '')
  model = models.build_model(config.model)
  rng = np.random.default_rng(0)
  view1, view2 = (jnp.asarray(rng.standard_normal((args.batch, args.size, args.size, 3))
                              .astype(np.float32)) for _ in range(2))
  variables = jax.jit(lambda k: model.init(k, view1[:2], train=False))(jax.random.PRNGKey(0))
  objective = methods.build('mlvicx', config.loss, model, 100)

  def gradient(v1):
    step = jnp.zeros((), jnp.int32)
    return jax.jit(jax.grad(lambda p: objective.loss(
        p, variables['batch_stats'], {}, v1, view2, step)[0]))(variables['params'])

  model_grad = gradient(view1)
  perturbed = gradient(view1 * (1 + 1e-7))
  hand_written = attention.context_bottleneck
  attention.context_bottleneck = lambda x, fc1, fc2, conv, dtype=None: plain_block(x, fc1, fc2, conv)
  try:
    autodiff = gradient(view1)
  finally:
    attention.context_bottleneck = hand_written
  norm = float(jnp.sqrt(sum(jnp.sum(g.astype(jnp.float64) ** 2) for g in jax.tree.leaves(model_grad))))
  print(f'batch {args.batch}, {args.size} px: |g| = {norm:.1f}')
  print(f'context blocks by jax autodiff: {relative(autodiff, model_grad):.2e}')
  print(f'view 1 x (1 + 1e-7):            {relative(perturbed, model_grad):.2e}')


if __name__ == '__main__':
  main()
