r"""Every pretraining method on the same synthetic data, steps and recipe: one table.

  python benchmarks/methods.py --workdir=/tmp/methods            # all methods, 150 steps
  python benchmarks/methods.py --methods=mlvicx,byol --steps=300

Each method keeps its own network (heads, predictor, context blocks) and loss
from configs/pretrain/<method>.py, with the heads narrowed (width / 8, at
least 64) to the demo's trunk; everything else is the demo's recipe
(configs/demo.py: 1,200 synthetic NIH films, 96 px, batch 64, AdamW), so the
rows differ only in the method. The methods' own optimisers and batch sizes
are for real data and long runs (LARS at batch 64 barely moves in minutes;
see configs/demo.py). Per method it prints the median seconds per step
(after --skip logged steps) and its ratio to MLVICX's, the online k-NN
monitor's last mean AUC (validation split), and the frozen linear probe's
test mean AUC at --fraction labels over --seeds (mean +- sample sd), beside
the probe of MLVICX's untrained network (random init).
"""
import importlib
import json
import os
import statistics
import sys

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mlvicx_jax import pretrained  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import evaluate  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.train import loop  # pylint: disable=g-import-not-at-top,wrong-import-position

METHODS = ('mlvicx', 'vicreg', 'barlow_twins', 'simclr', 'moco_v2', 'byol', 'simsiam',
           'mlvicx_global_only', 'mlvicx_local_only', 'mlvicx_no_context')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/mlvicx_methods', 'Where runs and data go.')
_METHODS = flags.DEFINE_list('methods', list(METHODS), 'configs/pretrain/<name>.py to run.')
_STEPS = flags.DEFINE_integer('steps', 150, 'Pretraining steps per method.')
_SKIP = flags.DEFINE_integer('skip', 2, 'Logged steps left out of the s/step median.')
_FRACTION = flags.DEFINE_float('fraction', 0.3, 'Label fraction of the frozen probes.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Probe seeds.')
_QUEUE = flags.DEFINE_integer('queue_size', 1024, "MoCo's queue (a multiple of the batch).")


def _narrow(widths):
  return tuple(max(64, w // 8) for w in widths)


def method_config(name: str, steps: int):
  """The demo's recipe with the method's network and loss."""
  base = importlib.import_module('configs.demo').get_config('').pretrain
  own = importlib.import_module(f'configs.pretrain.{name}').get_config('')
  base.method, base.loss = own.method, own.loss
  for field in ('context_blocks', 'multilevel', 'head_hidden_norm', 'head_output_norm',
                'head_output_bias', 'predictor_output_norm'):
    base.model[field] = own.model[field]
  base.model.global_head = _narrow(own.model.global_head) if own.model.global_head else ()
  base.model.predictor = _narrow(own.model.predictor)
  if own.method == 'moco_v2':
    base.loss.queue_size = _QUEUE.value
  base.num_train_steps = base.checkpoint_every_steps = steps
  base.monitor.every_steps = steps
  return base


def probe_auc(config, checkpoint: str, out: str) -> list[float]:
  probe = importlib.import_module('configs.demo').get_config('').probe
  probe.label_fractions = (_FRACTION.value,)
  probe.seeds = tuple(int(s) for s in _SEEDS.value)
  probe.checkpoint, probe.data_dir, probe.name = checkpoint, config.data_dir, 'probe'
  return [r['test']['mean_auc'] for r in evaluate.run(probe, out)]


def main(argv):
  del argv
  root = os.path.abspath(_WORKDIR.value)
  rows, seconds = [], {}
  data_config = method_config('mlvicx', _STEPS.value)
  synthetic.data_dir_for(data_config, os.path.join(root, 'data'))
  for name in _METHODS.value:
    config = method_config(name, _STEPS.value)
    config.data_dir = data_config.data_dir
    workdir = os.path.join(root, name)
    loop.pretrain(config, workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      logged = [json.loads(line) for line in f]
    steps = [config.global_batch_size / r['pairs_per_second'] for r in logged[_SKIP.value:]]
    seconds[name] = statistics.median(steps)
    knn = [r['knn/mean_auc'] for r in logged if 'knn/mean_auc' in r]
    rows.append((name, seconds[name], knn[-1] if knn else float('nan'),
                 probe_auc(config, workdir, os.path.join(workdir, 'probe'))))
  random_dir = pretrained.save_random_init(data_config, os.path.join(root, 'random_init'))
  rows.append(('random init (MLVICX network)', None, None,
               probe_auc(data_config, random_dir, os.path.join(root, 'random_init_probe'))))
  reference = seconds.get('mlvicx')
  print(f'{_STEPS.value} steps, batch {data_config.global_batch_size}, '
        f'{data_config.image_size} px; frozen probe at {_FRACTION.value:.0%} labels, '
        f'seeds {",".join(_SEEDS.value)}')
  print('| method | s/step | vs MLVICX | k-NN mean AUC (last) | probe mean AUC ± sd |')
  print('|---|---|---|---|---|')
  for name, step_s, knn, aucs in rows:
    sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
    timing = '-' if step_s is None else f'{step_s:.2f}'
    ratio = '-' if step_s is None or not reference else f'{step_s / reference:.2f}x'
    knn_text = '-' if knn is None else f'{knn:.3f}'
    print(f'| {name} | {timing} | {ratio} | {knn_text} | {statistics.mean(aucs):.3f} ± {sd:.3f} |')


if __name__ == '__main__':
  app.run(main)
