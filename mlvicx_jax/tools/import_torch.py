r"""Converts official MLVICX or torchvision ResNet18 PyTorch weights to Orbax.

  python -m mlvicx_jax.tools.import_torch --input=FILE --output=DIR

Accepted inputs: an official trainer checkpoint (`{'model': state_dict, ...}`),
an encoder snapshot (`{'online': state_dict}`), or a torchvision ResNet18
state dict (its ImageNet `fc` classifier is dropped). Every tensor is mapped
by name; a missing, unexpected or mis-shaped tensor is an error naming it.
torch is only needed by this tool.

The multi-level branch's common resize size (the official `out_size`) has no
tensor, so it cannot be read off the weights: it comes from `--multilevel_size`
(default 64, the official value) or from an `out_size` in a config/args entry
saved beside the weights. The pool size it is checked against IS in the
tensors (the head's input width); both are recorded in the meta.
"""
import math
import numbers
import re
from typing import Mapping, Optional

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mlvicx_jax import checkpoint
from mlvicx_jax import cli
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
SIZE_FLAG = '--multilevel_size'
OFFICIAL_SIZE = 64  # the official `out_size`
# Entries of a saved torch object that may hold the run's settings.
_CONFIG_ENTRIES = ('args', 'config', 'cfg', 'opt', 'hparams', 'hyper_parameters')
_HEAD_IN = 'resize_project.conv_head.projection.2.weight'


def _field(container, name: str):
  """container[name] or container.name (dicts, namespaces, config objects), else None."""
  if isinstance(container, Mapping):
    return container.get(name)
  if isinstance(container, (str, bytes, numbers.Number, list, tuple)):
    return None
  try:
    return getattr(container, name, None)
  except Exception:  # pylint: disable=broad-except
    return None  # exotic objects whose attribute access raises


def _as_size(value, where: str) -> int:
  """A positive integer resize size; (s, s) sequences are accepted, anything else is an error."""
  if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
    value = value[0]
  if isinstance(value, str) and value.strip().isdigit():  # settings read from text files
    value = int(value)
  if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0:
    return int(value)
  raise checkpoint.CheckpointError(
      f'{where}={value!r}: the multi-level common resize size must be a positive integer')


def stored_out_size(obj) -> tuple[Optional[int], str]:
  """(out_size, 'entry.out_size') from a config/args entry saved beside the weights, if any."""
  if not isinstance(obj, Mapping):
    return None, ''
  found = []
  for entry in _CONFIG_ENTRIES:
    container = obj.get(entry)
    if container is None:
      continue
    value = _field(container, 'out_size')
    if value is not None:
      found.append((f'{entry}.out_size', value))
  sizes = [(where, _as_size(value, where)) for where, value in found]
  if len({size for _, size in sizes}) > 1:
    raise checkpoint.CheckpointError(f'the checkpoint disagrees with itself: {sizes}')
  return (sizes[0][1], sizes[0][0]) if sizes else (None, '')


def resolve_multilevel_size(obj, flag_value=None) -> tuple[int, str]:
  """(size, its source): the flag if given, else a stored out_size, else the official 64.

  A given flag that contradicts a stored out_size is an error, not a silent pick.
  """
  stored, where = stored_out_size(obj)
  if flag_value is not None:
    size = _as_size(flag_value, SIZE_FLAG)
    if stored is not None and stored != size:
      raise checkpoint.CheckpointError(
          f'{SIZE_FLAG}={size} contradicts the checkpoint entry {where} = {stored}')
    return size, SIZE_FLAG
  if stored is not None:
    return stored, where
  return OFFICIAL_SIZE, f'{SIZE_FLAG} (default)'


def _describe_source(source: str) -> str:
  """Meta/CLI wording; says the tensors never show the size, so users know to check it."""
  if source == SIZE_FLAG:
    return f'flag {SIZE_FLAG} (PyTorch tensors do not store it)'
  if source.startswith(SIZE_FLAG):
    return (f'default of flag {SIZE_FLAG}, the official out_size '
            '(PyTorch tensors do not store it)')
  return f'checkpoint entry {source} (PyTorch tensors do not store it)'


def _pool_and_aggregation(in_features: int, channels: int, levels: int) -> tuple[int, str]:
  """The pooled grid side and aggregation that give the head's input width."""
  options = []
  if in_features % channels == 0:
    per_channel = in_features // channels
    side = math.isqrt(per_channel)
    if side >= 1 and side * side == per_channel:
      options.append((side, 'sum'))
    if levels > 1 and per_channel % levels == 0:
      side = math.isqrt(per_channel // levels)
      if side >= 1 and side * side == per_channel // levels:
        options.append((side, 'concat'))
  if not options:
    raise checkpoint.CheckpointError(
        f'{_HEAD_IN}: in_features {in_features} is neither {channels} channels x a square '
        f'pooled grid (sum of levels) nor {levels} levels x {channels} channels x a square '
        '(concatenation), so the multi-level pool size cannot be read off it')
  if len(options) > 1:  # e.g. 4 levels: sum pooled 2p x 2p == concat pooled p x p
    options = [o for o in options if o[0] == models.model_config().multilevel_pool]
    if len(options) != 1:
      raise checkpoint.CheckpointError(
          f'{_HEAD_IN}: in_features {in_features} fits both sum and concatenation of '
          f'{levels} levels with different pool sizes; cannot tell which was trained')
  return options[0]


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


def infer_model_config(state: dict, layout: str, multilevel_size: int = OFFICIAL_SIZE,
                       size_source: str = SIZE_FLAG):
  """Reads architecture knobs off tensor shapes, so 2048/4096 heads, sum/concat all import.

  `multilevel_size` has no tensor; it is only checked against the pool size the
  head's input width shows (`size_source` names where it came from in errors).
  """
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
    if _HEAD_IN not in state:
      raise checkpoint.CheckpointError(f'missing tensor {_HEAD_IN!r} (the multi-level head)')
    cfg.multilevel_head = tuple(
        int(state[f'resize_project.conv_head.projection.{i}.weight'].shape[0]) for i in (2, 5, 8))
    cfg.multilevel_pool, cfg.aggregation = _pool_and_aggregation(
        int(state[_HEAD_IN].shape[1]), cfg.multilevel_channels, len(convs))
    size = _as_size(multilevel_size, size_source)
    if size < cfg.multilevel_pool:
      raise checkpoint.CheckpointError(
          f'{size_source}={size} is smaller than the {cfg.multilevel_pool}x'
          f'{cfg.multilevel_pool} pooled grid that {_HEAD_IN} shows (in_features '
          f'{state[_HEAD_IN].shape[1]}): the official model pools the resized maps down, '
          'never up to a larger grid')
    cfg.multilevel_size = size
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


def import_state_dict(obj, output: str, source: str = '',
                      multilevel_size: Optional[int] = None):
  """Converts an already-loaded torch object and writes the Orbax checkpoint.

  `multilevel_size=None` means the flag was not given: a stored out_size, else 64.
  Returns (variables, model config, meta).
  """
  state, layout = normalise_state_dict(obj)
  state = {k: (v.detach().cpu().numpy() if hasattr(v, 'detach') else np.asarray(v))
           for k, v in state.items()}
  if any(k.startswith('resize_project.') for k in state):
    size, size_source = resolve_multilevel_size(obj, multilevel_size)
    cfg = infer_model_config(state, layout, size, size_source)
    size_meta = {'multilevel_size': cfg.multilevel_size,
                 'multilevel_size_from': _describe_source(size_source),
                 'multilevel_pool_from': f'{_HEAD_IN} in_features'}
  else:
    cfg = infer_model_config(state, layout)
    size_meta = {'multilevel_size': None,
                 'multilevel_size_from': f'no multi-level branch; {SIZE_FLAG} ignored'}
  variables = convert(state, layout, cfg)
  meta = {'model_config': checkpoint.config_to_json(cfg), 'source': source,
          'format': f'torch-{layout}', **size_meta}
  checkpoint.save_model(output, variables, meta)
  return variables, cfg, meta


def load_torch(path: str):
  """torch.load without arbitrary code; argparse namespaces (saved `args`) are allowed."""
  import argparse  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  safe = getattr(torch.serialization, 'safe_globals', None)
  if safe is None:
    return torch.load(path, map_location='cpu', weights_only=True)
  with safe([argparse.Namespace]):
    return torch.load(path, map_location='cpu', weights_only=True)


FLAGS = flags.FLAGS


def define_flags():
  """Only when run as a program: export_torch imports this module and has its own --output."""
  flags.DEFINE_string('input', None, 'PyTorch checkpoint (.pth/.pt).')
  flags.DEFINE_string('output', None, 'Directory for the Orbax checkpoint (must not exist).')
  flags.DEFINE_integer('multilevel_size', OFFICIAL_SIZE,
                       'Common resize of the multi-level branch (the official out_size). '
                       'No tensor stores it: when not given, an out_size saved in the '
                       "checkpoint's args/config is used, else this default.")
  flags.mark_flags_as_required(['input', 'output'])


def read_error(path: str, error: Exception) -> str:
  """Why a file is not a checkpoint this tool reads, never advising a pickle load."""
  text = str(error)
  unpickler = text.split('WeightsUnpickler error:', 1)
  if 'Unsupported global' in text:
    cause = ('it holds Python objects that only an unrestricted pickle load could build, '
             'which can run arbitrary code; re-save its state dict with torch.save')
  elif len(unpickler) == 2:  # torch's own advice around it suggests a pickle load: left out
    cause = 'not a torch.save file: ' + (unpickler[1].strip().splitlines() or ['unreadable'])[0]
  elif isinstance(error, EOFError):
    cause = 'the file ends early: empty or truncated'
  else:
    cause = (text.strip().splitlines() or [type(error).__name__])[0][:200]
  return (f'{path} is not a PyTorch checkpoint this tool reads ({cause}); expected a '
          'torch.save file of a state dict, an official trainer checkpoint with "model", '
          "or an {'online': ...} encoder snapshot")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import os  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(FLAGS.input):
    raise checkpoint.CheckpointError(f'--input {FLAGS.input}: no such file')
  if os.path.exists(FLAGS.output) and os.listdir(FLAGS.output):
    raise checkpoint.CheckpointError(f'--output {FLAGS.output} exists and is not empty; '
                                     'refusing to overwrite it')
  try:
    obj = load_torch(FLAGS.input)
  except Exception as e:  # pylint: disable=broad-except
    raise checkpoint.CheckpointError(read_error(FLAGS.input, e)) from None
  flag = FLAGS.multilevel_size if FLAGS['multilevel_size'].present else None
  variables, cfg, meta = import_state_dict(obj, FLAGS.output, source=FLAGS.input,
                                           multilevel_size=flag)
  count = sum(v.size for v in jax.tree.leaves(variables))
  print(f'wrote {FLAGS.output}: {count:,} values; backbone stages {cfg.stage_sizes}, '
        f'context blocks {cfg.context_blocks}, global head {cfg.global_head}, '
        f'multi-level {cfg.multilevel} ({cfg.aggregation})')
  if cfg.multilevel:
    print(f'multi-level resize size {meta["multilevel_size"]} from '
          f'{meta["multilevel_size_from"]}; pool {cfg.multilevel_pool}x{cfg.multilevel_pool} '
          f'read from the tensors')
  else:
    print(f'multi-level resize size: none ({meta["multilevel_size_from"]})')


def _errors() -> tuple:
  return (checkpoint.CheckpointError, OSError)


if __name__ == '__main__':
  define_flags()
  app.run(cli.exit_on_user_errors(main, _errors))
