r"""Alias of `python -m mlvicx_jax.evaluate` for SIIM-ACR segmentation (SPEC section 5).

  python -m mlvicx_jax.segment --config=configs/eval/siim.py \
      --config.checkpoint=PRETRAIN_WORKDIR --config.data_dir=TFDS_DIR --workdir=OUT
"""
from absl import app
from absl import flags

from mlvicx_jax import cli
from mlvicx_jax.evaluate import __main__ as evaluate_main

if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.check_config_flag()
  app.run(evaluate_main.main)
