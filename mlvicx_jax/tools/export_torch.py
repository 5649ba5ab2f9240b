r"""Writes a checkpoint's weights as PyTorch state dicts, the inverse of import_torch.

  python -m mlvicx_jax.tools.export_torch --checkpoint=DIR --output=FILE.pth \
      [--format=official|torchvision] [--step=N]

DIR is anything `pretrained.load` reads: a pretraining workdir, its
checkpoints/ root, or an import_torch output (`--step` picks a step, default
the latest). Every tensor is named by `import_torch.torch_name`, the one
name table of both directions, so `import_torch` reads the file back bitwise.

`official` writes the official encoder snapshot, `{'online': state_dict}`
(what the official trainer saves each epoch and its downstream `ln_cls.py`
reads), with an `out_size` in `config` because no tensor holds the
multi-level resize size. Keys come in the official module order, not sorted:
`ln_cls.py` copies the first tensors of 'online' into a torchvision ResNet18
by position. The official code creates the per-level 1x1 convs lazily in
forward; they are written (`resize_project.convs.<i>`, after `conv_head`, as
a state dict has them after the first forward), so the official module loads
the file once a forward pass has created them, or with strict=False before.

`torchvision` writes a `resnet18` state dict of the trunk alone. A plain
ResNet18 has no place for the context blocks (nor for the heads), so their
tensors are left out and named in the report; there is no ImageNet
classifier either, so `fc.weight`/`fc.bias` are absent (not invented): load
with `strict=False` (missing: exactly fc) or after `model.fc = nn.Identity()`.
The BN statistics were gathered behind the context blocks' gates; without
the blocks they no longer describe the maps (evaluate's
`context_blocks='drop'` re-estimates them), so re-estimate them before
freezing.

BatchNorm: running_var is written as stored. torch accumulates the unbiased
batch variance, Flax the biased one, but in eval mode both divide by the
stored value, so copying it keeps the function (and the round trip); scaling
by N/(N-1) would change the outputs. num_batches_tracked (unused by torch
with a momentum) is the checkpoint's training step: 0 for an import.
"""
import collections
import os
import re
import tempfile
from typing import Optional

from absl import app
from absl import flags
import jax
import numpy as np

from mlvicx_jax import checkpoint
from mlvicx_jax import cli
from mlvicx_jax.tools import import_torch

FORMATS = ('official', 'torchvision')
# Torch modules whose weights are 1x1 Conv2d while the flax model uses Dense.
_CONV_1X1 = re.compile(r'^(cbt\d+\.cam\.fc\.\d+|resize_project\.convs\.\d+)\.weight$')
# torch registration order of named children (numbered ones sort numerically):
# EncoderwithProjection, torchvision ResNet/BasicBlock, CBAM, the heads, BN.
_ORDER = ('encoder', 'conv1', 'bn1', 'conv2', 'bn2', 'downsample',
          'layer1', 'layer2', 'layer3', 'layer4', 'projetion', 'l1', 'l2', 'l3',
          'cbt1', 'cbt2', 'cbt3', 'cbt4', 'cbt5', 'cam', 'sam', 'fc',
          'resize_project', 'conv_head', 'projection', 'convs',
          'weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
_RANK = {name: i for i, name in enumerate(_ORDER)}
# Model fields no tensor holds (the resize size travels in `config.out_size`).
_NOT_IN_TENSORS = ('multilevel_impl', 'dtype', 'multilevel_size')
_TRUNK_FIELDS = ('stage_sizes', 'width')
_BLOCK_FIELDS = ('reduction', 'spatial_kernel')
_HEAD_FIELDS = ('head_hidden_norm', 'head_output_norm', 'head_output_bias')
_MULTILEVEL_FIELDS = ('levels', 'multilevel_channels', 'multilevel_pool', 'multilevel_head',
                      'aggregation')


def torch_order(key: str) -> tuple:
  """Sort key giving a state dict's order (module registration order)."""
  return tuple((0, int(p), '') if p.isdigit() else (1, _RANK.get(p, len(_RANK)), p)
               for p in key.split('.'))


def to_torch_layout(value: np.ndarray, key: str) -> np.ndarray:
  """Inverse of import_torch's _to_flax: HWIO->OIHW, IO->OI, Dense->1x1 conv."""
  value = np.asarray(value)
  if value.ndim == 4:
    value = value.transpose(3, 2, 0, 1)
  elif value.ndim == 2:
    value = value.T
    if _CONV_1X1.match(key):
      value = value[:, :, None, None]
  return np.array(value, order='C')  # a writable copy: torch refuses read-only buffers


def _kept(path: tuple, layout: str) -> bool:
  """torchvision keeps the plain ResNet trunk only."""
  return layout == 'official' or (path[0] == 'backbone' and not path[1].startswith('cbt'))


def state_dict(variables: dict, cfg, layout: str, step: int = 0):
  """(OrderedDict torch key -> numpy array, torch keys of the tensors left out)."""
  if layout not in FORMATS:
    raise ValueError(f'unknown format {layout!r}: use one of {FORMATS}')
  out, dropped, origin = {}, [], {}
  for tree_path, value in jax.tree_util.tree_leaves_with_path(variables):
    keys = tuple(p.key for p in tree_path)
    collection, path = keys[0], keys[1:]
    if not _kept(path, layout):  # reported by its official name where it has one
      try:
        dropped.append(import_torch.torch_name(path, 'official', cfg.levels))
      except (KeyError, ValueError):
        dropped.append('/'.join(keys))
      continue
    try:
      key = import_torch.torch_name(path, layout, cfg.levels)
    except (KeyError, ValueError) as e:
      raise checkpoint.CheckpointError(
          f'{"/".join(keys)} has no place in the {layout} PyTorch layout') from e
    if key in origin:
      raise checkpoint.CheckpointError(f'{"/".join(keys)} and {origin[key]} both map to {key}')
    origin[key] = '/'.join(keys)
    out[key] = to_torch_layout(value, key)
    if collection == 'batch_stats' and path[-1] == 'mean':
      out[key[:-len('running_mean')] + 'num_batches_tracked'] = np.asarray(step, np.int64)
  ordered = collections.OrderedDict((k, out[k]) for k in sorted(out, key=torch_order))
  return ordered, sorted(dropped, key=torch_order)


def check_expressible(state: dict, cfg, layout: str) -> None:
  """Refuses a model the layout cannot describe (import_torch would read another one)."""
  size = cfg.multilevel_size if cfg.multilevel else import_torch.OFFICIAL_SIZE
  read = import_torch.infer_model_config(state, layout, size)
  fields = _TRUNK_FIELDS if layout == 'torchvision' else [
      f for f in cfg.keys() if f not in _NOT_IN_TENSORS]
  unused = ((() if cfg.context_blocks else _BLOCK_FIELDS) + (() if cfg.global_head else _HEAD_FIELDS)
            + (() if cfg.multilevel else _MULTILEVEL_FIELDS))  # no tensor, nothing to check
  for field in fields:
    if field in unused:
      continue
    mine, theirs = cfg[field], read[field]
    if (tuple(mine) if isinstance(mine, list) else mine) != theirs:
      raise checkpoint.CheckpointError(
          f'the {layout} layout cannot express model.{field}={mine!r}: '
          f'import_torch would read it back as {theirs!r}')


def _to_torch(state: dict):
  import torch  # pylint: disable=g-import-not-at-top
  return collections.OrderedDict((k, torch.from_numpy(v)) for k, v in state.items())


def save_atomic(obj, output: str) -> None:
  """torch.save to a temporary file beside `output`, then rename: no half files."""
  import torch  # pylint: disable=g-import-not-at-top
  directory = os.path.dirname(os.path.abspath(output))
  fd, tmp = tempfile.mkstemp(prefix='.export_torch.', suffix='.tmp', dir=directory)
  try:
    with os.fdopen(fd, 'wb') as f:
      torch.save(obj, f)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a .pth is an ordinary file
    os.replace(tmp, output)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _check_output(output: str) -> None:
  directory = os.path.dirname(os.path.abspath(output))
  if os.path.exists(output):
    raise checkpoint.CheckpointError(f'--output {output} exists; refusing to overwrite it')
  if not os.path.isdir(directory):
    raise checkpoint.CheckpointError(f'--output directory {directory} does not exist')
  if not os.access(directory, os.W_OK | os.X_OK):
    raise checkpoint.CheckpointError(f'--output directory {directory} is not writable')


def export(path: str, output: str, layout: str = 'official', step: Optional[int] = None) -> dict:
  """Reads the checkpoint at `path`, writes `output`; returns a report of what was written."""
  if layout not in FORMATS:
    raise ValueError(f'unknown format {layout!r}: use one of {FORMATS}')
  _check_output(output)
  variables, meta, step = checkpoint.restore_model(path, step)
  if 'model_config' not in meta:
    raise checkpoint.CheckpointError(f'{path}: checkpoint meta has no model_config')
  cfg = checkpoint.model_config_from_json(meta['model_config'])
  state, dropped = state_dict(variables, cfg, layout, step)
  check_expressible(state, cfg, layout)
  if layout == 'official':
    obj = {'online': _to_torch(state)}
    if cfg.multilevel:
      obj['config'] = {'out_size': int(cfg.multilevel_size)}
  else:
    obj = _to_torch(state)
  save_atomic(obj, output)
  return {'output': output, 'format': layout, 'step': step, 'tensors': len(state),
          'values': int(sum(v.size for v in state.values())), 'dropped': dropped,
          'context_blocks': sorted({k.split('.')[0] for k in dropped if k.startswith('cbt')},
                                   key=torch_order)}


FLAGS = flags.FLAGS


def define_flags():
  """Only when run as a program, so importing this module defines no flags."""
  flags.DEFINE_string('checkpoint', None,
                      'Pretraining workdir, checkpoint root or import_torch output.')
  flags.DEFINE_string('output', None, 'The .pth file to write (must not exist).')
  flags.DEFINE_enum('format', 'official', FORMATS,
                    "official: {'online': MLVICX encoder state dict}; torchvision: a "
                    'resnet18 state dict of the trunk (no context blocks, no fc).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.mark_flags_as_required(['checkpoint', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  report = export(FLAGS.checkpoint, FLAGS.output, FLAGS.format, FLAGS.step)
  print(f'wrote {report["output"]} ({report["format"]}): {report["tensors"]} tensors, '
        f'{report["values"]:,} values, step {report["step"]}')
  if report['dropped']:
    blocks = [k for k in report['dropped'] if k.startswith('cbt')]
    heads = sorted({k.split('.')[0] for k in report['dropped'] if not k.startswith('cbt')})
    if blocks:
      print(f'left out: context blocks {", ".join(report["context_blocks"])} '
            f'({len(blocks)} tensors; a torchvision ResNet18 has no place for them): '
            + ', '.join(blocks))
      print('the BN statistics were gathered behind these blocks: re-estimate them '
            'before using the plain trunk frozen')
    if heads:
      print(f'left out: heads {", ".join(heads)} '
            f'({len(report["dropped"]) - len(blocks)} tensors)')
  if report['format'] == 'torchvision':
    print('no fc.weight/fc.bias: load with strict=False or after model.fc = nn.Identity()')


def _errors() -> tuple:
  return (ValueError, OSError)  # CheckpointError is a ValueError


if __name__ == '__main__':
  define_flags()
  app.run(cli.exit_on_user_errors(main, _errors))
