r"""MLVICX pretraining entry point.

  python -m mlvicx_jax.main --config=configs/nih.py --workdir=DIR

Re-running with the same DIR resumes from its latest checkpoint. On several
hosts every process runs the same command (see launch/).
"""
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from mlvicx_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variant].',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and metrics go.')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0 for multi-process runs; when unset, '
                    'jax.distributed auto-detects TPU pods and SLURM jobs.')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process runs).')
flags.DEFINE_integer('process_id', None, 'This process (multi-process runs).')
flags.DEFINE_bool('distributed', None, 'Force jax.distributed.initialize() on (auto-detected '
                  'cluster) or off; default: on when a cluster environment is detected.')
flags.DEFINE_string('cpu_collectives', 'gloo', 'Cross-process collectives on CPU.')
flags.DEFINE_integer('heartbeat_timeout', 100,
                     'Seconds after which the others give up on a silent process (jax.distributed '
                     'heartbeat); a dead peer stops the survivors in about this time.')


def _cluster_detected() -> bool:
  env = os.environ
  return (int(env.get('SLURM_NTASKS', '1')) > 1 or 'TPU_WORKER_HOSTNAMES' in env
          or 'MEGASCALE_COORDINATOR_ADDRESS' in env)


def initialize_distributed():
  """Starts jax.distributed when this is one process of several."""
  explicit = FLAGS.coordinator_address is not None
  if not explicit and not (FLAGS.distributed or (FLAGS.distributed is None and _cluster_detected())):
    return
  if FLAGS.cpu_collectives and jax.config.jax_platforms in (None, '', 'cpu'):
    jax.config.update('jax_cpu_collectives_implementation', FLAGS.cpu_collectives)
  if explicit:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
                               heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
  else:
    jax.distributed.initialize(heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
  logging.info('Process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_libraries()
  initialize_distributed()
  config = FLAGS.config
  from mlvicx_jax import synthetic  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import config_check  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import loop  # pylint: disable=g-import-not-at-top
  config_check.validate(config)
  synthetic.data_dir_for(config, FLAGS.workdir)  # only configs with synthetic_images > 0
  loop.pretrain(config, FLAGS.workdir)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.check_config_flag()
  app.run(cli.exit_on_user_errors(main, cli.pretraining_errors))
