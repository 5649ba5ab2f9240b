"""model.remat: the same function and parameters; configs without it still load.

The memory it saves is measured by benchmarks/accelerator.py, not here: on
XLA's CPU the tiny trunk's compiled temporaries are no smaller with it.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlvicx_jax import checkpoint
from mlvicx_jax import config_files
from mlvicx_jax import models
from mlvicx_jax.train import resume


def _loss_fn(trunk):
  def loss(params, batch_stats, x):
    out, _ = trunk.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                         mutable=['batch_stats'])
    return sum(jnp.sum(m * jnp.cos(m)) for m in out['maps']) + jnp.sum(out['features'] ** 2)
  return loss


def test_blocks_remat_gives_the_same_loss_and_gradients():
  cfg = models.model_config('tiny')
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 96, 96, 3)).astype(np.float32))
  results = {}
  for remat in ('none', 'blocks'):
    cfg.remat = remat
    trunk = models.build_backbone(cfg)  # remat acts on the trunk's blocks
    variables = jax.jit(lambda k, x: trunk.init(k, x, train=False))(jax.random.PRNGKey(0), x)
    grad = jax.jit(jax.value_and_grad(_loss_fn(trunk)))
    compiled = grad.lower(variables['params'], variables['batch_stats'], x).compile()
    loss, grads = compiled(variables['params'], variables['batch_stats'], x)
    results[remat] = (variables, loss, grads)
  (v_none, l_none, g_none), (v_blocks, l_blocks, g_blocks) = (
      results['none'], results['blocks'])
  assert jax.tree.structure(v_none) == jax.tree.structure(v_blocks)  # same checkpoints
  for a, b in zip(jax.tree.leaves(v_none), jax.tree.leaves(v_blocks)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(l_blocks, l_none, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_none), jax.tree.leaves(g_blocks)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * float(np.max(np.abs(a))))


def test_unknown_remat_value_is_named():
  cfg = models.model_config('tiny')
  cfg.remat = 'stages'
  with pytest.raises(ValueError, match='model.remat'):
    models.build_model(cfg)


def test_model_configs_written_before_remat_existed_load_as_none():
  saved = checkpoint.config_to_json(models.model_config('tiny'))
  del saved['remat']
  cfg = checkpoint.model_config_from_json(json.loads(json.dumps(saved)))
  assert cfg.remat == 'none'
  models.build_model(cfg)  # builds as before


def test_resume_ignores_a_missing_remat_and_allows_a_listed_change():
  config = config_files.load(config_files.PRETRAINING, 'smoke')
  saved = json.loads(config.to_json_best_effort())
  del saved['model']['remat']  # a run from before the field
  assert resume.check_config_drift(saved, config, 'W', 4) == []
  config.model.remat = 'blocks'  # same parameters and function: allowed when listed
  with pytest.raises(resume.ConfigDriftError, match='allow_resume_changes=model.remat'):
    resume.check_config_drift(saved, config, 'W', 4)
  config.allow_resume_changes = 'model.remat'
  assert [d[0] for d in resume.check_config_drift(saved, config, 'W', 4)] == ['model.remat']
