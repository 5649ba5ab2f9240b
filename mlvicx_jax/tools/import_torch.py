r"""Converts official MLVICX or torchvision ResNet18 PyTorch weights to Orbax.

  python -m mlvicx_jax.tools.import_torch --input=FILE --output=DIR

Accepted inputs: an official trainer checkpoint (`{'model': state_dict, ...}`),
an encoder snapshot (`{'online': state_dict}`), or a torchvision ResNet18
state dict (its ImageNet `fc` classifier is dropped). Every tensor is mapped
by name; a missing, unexpected or mis-shaped tensor is an error naming it.
torch is only needed by this tool.
"""
import re
from typing import Mapping

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mlvicx_jax import checkpoint
from mlvicx_jax import models

# Official EncoderwithProjection keeps torchvision's children in a Sequential
# named `encoder`: 0 conv1, 1 bn1, 4..7 layer1..layer4.
_OFFICIAL_TRUNK = {'encoder.0': 'conv1', 'encoder.1': 'bn1', 'encoder.4': 'layer1',
                   'encoder.5': 'layer2', 'encoder.6': 'layer3', 'encoder.7': 'layer4'}
# Projection_CONV's Sequential: pool, flatten, then Linear/BN triples.
_OFFICIAL_CONV_HEAD = {'linear1': '2', 'bn1': '3', 'linear2': '5', 'bn2': '6',
                       'linear3': '8', 'bn3': '9'}
_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
         'mean': 'running_mean', 'var': 'running_var'}
# Parameter-free or bookkeeping entries of torch state dicts.
_IGNORED = re.compile(r'(^|\.)num_batches_tracked$')


def _strip_prefix(state: Mapping[str, np.ndarray], prefix: str) -> dict:
  if state and all(k.startswith(prefix) for k in state):
    return {k[len(prefix):]: v for k, v in state.items()}
  return dict(state)


def normalise_state_dict(obj) -> tuple[dict, str]:
  """Returns (encoder-level state dict, layout) for any accepted input object."""
  if isinstance(obj, Mapping) and 'model' in obj and isinstance(obj['model'], Mapping):
    state = _strip_prefix(_strip_prefix(obj['model'], 'module.'), 'encoder.')
    return state, 'official'
  if isinstance(obj, Mapping) and 'online' in obj and isinstance(obj['online'], Mapping):
    return _strip_prefix(obj['online'], 'module.'), 'official'
  if isinstance(obj, Mapping) and 'state_dict' in obj and isinstance(obj['state_dict'], Mapping):
    obj = obj['state_dict']
  if isinstance(obj, Mapping):
    state = _strip_prefix(obj, 'module.')
    if any(k.startswith('encoder.0.') for k in state):
      return state, 'official'
    if 'conv1.weight' in state:
      return state, 'torchvision'
  raise checkpoint.CheckpointError(
      'input is neither an official MLVICX checkpoint (keys "model" or "online") '
      'nor a torchvision ResNet state dict (key "conv1.weight")')


def torch_name(path: tuple, layout: str, levels=(0, 1, 2, 3, 4)) -> str:
  """The torch state-dict key of one flax variable path (collection dropped)."""
  part, *rest = path
  *modules, leaf = rest
  leaf = _LEAF[leaf]
  if part == 'backbone':
    first, *inner = modules
    match = re.fullmatch(r'layer(\d+)_(\d+)', first)
    if match:
      stage, block = match.groups()
      names = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}
      head = f'layer{stage}' if layout == 'torchvision' else {
          v: k for k, v in _OFFICIAL_TRUNK.items()}[f'layer{stage}']
      return '.'.join([head, block, *[names.get(m, m) for m in inner], leaf])
    if first.startswith('cbt'):
      attention, layer = inner
      layer = {'fc1': 'fc.0', 'fc2': 'fc.2', 'conv': 'conv1'}[layer]
      return f'{first}.{attention}.{layer}.{leaf}'
    if layout == 'official':
      first = {v: k for k, v in _OFFICIAL_TRUNK.items()}[first]
    return f'{first}.{leaf}'
  if part == 'global_head':
    (layer,) = modules
    index, kind = layer[-1], ('0' if layer.startswith('linear') else '1')
    return f'projetion.l{index}.{kind}.{leaf}'
  if part == 'multilevel':
    if modules[0] == 'head':
      return f'resize_project.conv_head.projection.{_OFFICIAL_CONV_HEAD[modules[1]]}.{leaf}'
    level = int(modules[0][len('proj'):])
    return f'resize_project.convs.{list(levels).index(level)}.{leaf}'
  raise KeyError(path)


def _to_flax(value: np.ndarray, target_shape: tuple, key: str) -> np.ndarray:
  """Torch tensor layout -> flax layout for convs (OIHW->HWIO) and linears (OI->IO)."""
  value = np.asarray(value, np.float32)
  if len(target_shape) == 4 and value.ndim == 4:
    value = value.transpose(2, 3, 1, 0)
  elif len(target_shape) == 2 and value.ndim in (2, 4):
    if value.ndim == 4:
      if value.shape[2:] != (1, 1):
        raise checkpoint.CheckpointError(f'{key}: expected a 1x1 conv, got shape {value.shape}')
      value = value[:, :, 0, 0]
    value = value.T
  if tuple(value.shape) != tuple(target_shape):
    raise checkpoint.CheckpointError(
        f'{key}: shape {value.shape} (flax layout) does not fit the model, '
        f'which expects {tuple(target_shape)}')
  return value


def infer_model_config(state: dict, layout: str, multilevel_size: int = 64):
  """Reads architecture knobs off tensor shapes, so 2048/4096 heads, sum/concat all import."""
  cfg = models.model_config()
  conv1 = 'conv1.weight' if layout == 'torchvision' else 'encoder.0.weight'
  if conv1 not in state:
    raise checkpoint.CheckpointError(f'missing tensor {conv1!r} (the ResNet stem)')
  cfg.width = int(state[conv1].shape[0])
  stages = []
  for stage in range(1, 5):
    prefix = f'layer{stage}.' if layout == 'torchvision' else f'encoder.{stage + 3}.'
    blocks = {k[len(prefix):].split('.')[0] for k in state if k.startswith(prefix)}
    stages.append(len(blocks))
  cfg.stage_sizes = tuple(stages)
  cfg.context_blocks = any(k.startswith('cbt') for k in state)
  if cfg.context_blocks:
    cfg.reduction = int(state['cbt1.cam.fc.0.weight'].shape[1] // state['cbt1.cam.fc.0.weight'].shape[0])
    cfg.spatial_kernel = int(state['cbt1.sam.conv1.weight'].shape[-1])
  heads = sorted(k for k in state if re.fullmatch(r'projetion\.l\d\.0\.weight', k))
  cfg.global_head = tuple(int(state[k].shape[0]) for k in heads)
  convs = sorted({int(k.split('.')[2]) for k in state if k.startswith('resize_project.convs.')})
  cfg.multilevel = bool(convs)
  if convs:
    cfg.levels = tuple(convs)
    cfg.multilevel_channels = int(state['resize_project.convs.0.weight'].shape[0])
    first = state['resize_project.conv_head.projection.2.weight']
    cfg.multilevel_head = tuple(
        int(state[f'resize_project.conv_head.projection.{i}.weight'].shape[0]) for i in (2, 5, 8))
    pooled = cfg.multilevel_channels * cfg.multilevel_pool**2
    cfg.aggregation = 'sum' if first.shape[1] == pooled else 'concat'
    cfg.multilevel_size = multilevel_size
  elif any(k.startswith('resize_project.') for k in state):
    raise checkpoint.CheckpointError(
        'the multi-level head is present but its per-level 1x1 convs '
        '(resize_project.convs.*) are not: they are created lazily in the '
        'official code, so this checkpoint was saved before any forward pass')
  return cfg


def convert(state: dict, layout: str, cfg) -> dict:
  """Maps every tensor by name into a flax variable tree; nothing left at init."""
  model = models.build_model(cfg)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))
  used, out = set(), {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
    keys = tuple(p.key for p in path)
    collection, flax_path = keys[0], keys[1:]
    key = torch_name(flax_path, layout, cfg.levels)
    if key not in state:
      raise checkpoint.CheckpointError(f'missing tensor {key!r} (for {"/".join(keys)})')
    node = out.setdefault(collection, {})
    for k in flax_path[:-1]:
      node = node.setdefault(k, {})
    node[flax_path[-1]] = _to_flax(state[key], leaf.shape, key)
    used.add(key)
  ignored = {k for k in state if _IGNORED.search(k)}
  if layout == 'torchvision':
    ignored |= {'fc.weight', 'fc.bias'}  # ImageNet classifier, not part of the encoder
  unexpected = sorted(set(state) - used - ignored)
  if unexpected:
    raise checkpoint.CheckpointError(
        f'unexpected tensors not used by the model: {unexpected[:5]}'
        f'{" ..." if len(unexpected) > 5 else ""}')
  return out


def import_state_dict(obj, output: str, source: str = '', multilevel_size: int = 64):
  """Converts an already-loaded torch object and writes the Orbax checkpoint."""
  state, layout = normalise_state_dict(obj)
  state = {k: (v.detach().cpu().numpy() if hasattr(v, 'detach') else np.asarray(v))
           for k, v in state.items()}
  cfg = infer_model_config(state, layout, multilevel_size)
  variables = convert(state, layout, cfg)
  meta = {'model_config': checkpoint.config_to_json(cfg), 'source': source,
          'format': f'torch-{layout}'}
  checkpoint.save_model(output, variables, meta)
  return variables, cfg


FLAGS = flags.FLAGS
flags.DEFINE_string('input', None, 'PyTorch checkpoint (.pth/.pt).')
flags.DEFINE_string('output', None, 'Directory for the Orbax checkpoint (must not exist).')
flags.DEFINE_integer('multilevel_size', 64, 'Common resize of the multi-level branch '
                     '(not stored in torch checkpoints).')


def main(argv):
  del argv
  import os  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(FLAGS.input):
    raise app.UsageError(f'--input file {FLAGS.input} does not exist')
  if os.path.exists(FLAGS.output) and os.listdir(FLAGS.output):
    raise app.UsageError(f'--output {FLAGS.output} exists and is not empty; '
                         'refusing to overwrite it')
  try:
    obj = torch.load(FLAGS.input, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise app.UsageError(f'cannot read {FLAGS.input} as a PyTorch checkpoint: {e}')
  variables, cfg = import_state_dict(obj, FLAGS.output, source=FLAGS.input,
                                     multilevel_size=FLAGS.multilevel_size)
  count = sum(v.size for v in jax.tree.leaves(variables))
  print(f'wrote {FLAGS.output}: {count:,} values; backbone stages {cfg.stage_sizes}, '
        f'context blocks {cfg.context_blocks}, global head {cfg.global_head}, '
        f'multi-level {cfg.multilevel} ({cfg.aggregation})')


if __name__ == '__main__':
  flags.mark_flags_as_required(['input', 'output'])
  app.run(main)
