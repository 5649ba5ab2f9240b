"""export_torch writes what import_torch and the official torch modules read back.

The checkpoint is the session's pretrained one (real training steps, so its
BatchNorm statistics were gathered behind the context blocks). References are
independent: the test suite's own torch modules of the official architecture
and a torchvision-layout ResNet18 with the exported weights loaded by name.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

import torch_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import REPO
from mlvicx_jax import checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import pretrained  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.tools import export_torch  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.tools import import_torch  # pylint: disable=g-import-not-at-top,wrong-import-position


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope='module')
def source(pretrained_dir):
  loaded = pretrained.load(pretrained_dir)
  stats = _leaves(loaded.variables['batch_stats'])
  # Trained statistics, not the initial mean 0 / variance 1.
  assert all(np.abs(v).max() > 1e-3 for k, v in stats.items() if k.endswith("['mean']"))
  assert all(np.abs(v - 1).max() > 1e-3 for k, v in stats.items() if k.endswith("['var']"))
  return loaded


@pytest.fixture(scope='module')
def exported(pretrained_dir, source, tmp_path_factory):  # pylint: disable=unused-argument
  out = tmp_path_factory.mktemp('export')
  reports = {fmt: export_torch.export(pretrained_dir, str(out / f'{fmt}.pth'), fmt)
             for fmt in export_torch.FORMATS}
  return {fmt: (import_torch.load_torch(str(out / f'{fmt}.pth')), reports[fmt])
          for fmt in export_torch.FORMATS}


def _images(n=4, size=96):
  return np.random.default_rng(3).standard_normal((n, size, size, 3)).astype(np.float32)


def test_import_of_export_restores_every_array_bitwise(source, exported, tmp_path):
  obj, report = exported['official']
  assert report['dropped'] == [] and report['step'] == source.step
  import_torch.import_state_dict(obj, str(tmp_path / 'back'))
  back = pretrained.load(str(tmp_path / 'back'))
  mine, theirs = _leaves(source.variables), _leaves(back.variables)
  assert sorted(mine) == sorted(theirs)
  for key, value in mine.items():
    assert theirs[key].dtype == value.dtype and np.array_equal(theirs[key], value), key
  assert back.model_config.multilevel_size == source.model_config.multilevel_size
  # An import_torch output exports again to the same tensors (its step is 0).
  export_torch.export(str(tmp_path / 'back'), str(tmp_path / 'again.pth'))
  again = import_torch.load_torch(str(tmp_path / 'again.pth'))
  assert list(again['online']) == list(obj['online']) and again['config'] == obj['config']
  for key, value in obj['online'].items():
    expected = torch.zeros_like(value) if key.endswith('num_batches_tracked') else value
    assert torch.equal(again['online'][key], expected), key
  # The torchvision file reads back as the plain trunk, every array bitwise too.
  import_torch.import_state_dict(exported['torchvision'][0], str(tmp_path / 'trunk'))
  trunk = _leaves(pretrained.load(str(tmp_path / 'trunk')).variables)
  plain = _leaves(source.backbone_variables(keep_context_blocks=False))
  assert sorted(trunk) == sorted(k.replace("]['", "]['backbone']['", 1) for k in plain)
  for key, value in plain.items():
    assert np.array_equal(trunk[key.replace("]['", "]['backbone']['", 1)], value), key


def test_official_layout_in_the_official_torch_modules_gives_z_and_m(source, exported):
  obj, _ = exported['official']
  cfg = source.model_config
  ref = tr.Encoder(layers=cfg.stage_sizes, width=cfg.width, head=cfg.global_head,
                   ml_head=cfg.multilevel_head, ml_channels=cfg.multilevel_channels,
                   ml_size=obj['config']['out_size'], aggregation=cfg.aggregation,
                   reduction=cfg.reduction)
  # The official key order: ln_cls.py copies 'online' into a ResNet18 by position.
  assert list(obj['online']) == list(ref.state_dict())
  ref.load_state_dict(obj['online'], strict=True)
  assert int(obj['online']['encoder.1.num_batches_tracked']) == source.step
  images = _images()
  with torch.no_grad():
    z, m = ref.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  out = source.embed(images)
  dz = np.abs(z.numpy() - np.asarray(out['z'])).max()
  dm = np.abs(m.numpy() - np.asarray(out['m'])).max()
  print(f'max |z diff| {dz:.2e}, max |m diff| {dm:.2e}')
  assert dz < 1e-4 and dm < 1e-4


def test_torchvision_layout_is_the_plain_resnet18_trunk(source, exported):
  state, report = exported['torchvision']
  cfg = source.model_config
  ref = tr.TorchResNet(layers=cfg.stage_sizes, width=cfg.width)
  assert list(state) == [k for k in ref.state_dict() if not k.startswith('fc.')]
  result = ref.load_state_dict(state, strict=False)
  assert sorted(result.missing_keys) == ['fc.bias', 'fc.weight'] and not result.unexpected_keys
  blocks = sorted(k for k in source.variables['params']['backbone'] if k.startswith('cbt'))
  assert report['context_blocks'] == blocks == [f'cbt{i}' for i in range(1, 6)]
  n_block_tensors = len(_leaves({k: source.variables['params']['backbone'][k] for k in blocks}))
  assert len([k for k in report['dropped'] if k.startswith('cbt')]) == n_block_tensors
  images = _images()
  with torch.no_grad():
    features = ref.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  plain = models.build_backbone(cfg, keep_context_blocks=False)
  expected = np.asarray(plain.apply(source.backbone_variables(False), images, train=False)['features'])
  diff = np.abs(features - expected).max()
  print(f'max |features diff| {diff:.2e} (scale {np.abs(expected).max():.2e})')
  assert diff <= 1e-4 * max(1.0, np.abs(expected).max())


def _random_variables(cfg):
  model = models.build_model(cfg)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                                             train=False))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), shapes)


@pytest.mark.parametrize('field,value,message', [
    ('predictor', (32,), r'params/predictor/.* no place in the official'),
    ('levels', (1, 2, 3, 4), r'model\.levels=\(1, 2, 3, 4\).* back as \(0, 1, 2, 3\)'),
    ('head_output_norm', 'plain', r"model\.head_output_norm='plain'"),
], ids=['predictor', 'levels', 'head_output_norm'])
def test_models_the_official_layout_cannot_hold_are_refused(field, value, message):
  cfg = models.model_config('tiny')
  cfg[field] = value
  variables = _random_variables(cfg)
  with pytest.raises(checkpoint.CheckpointError, match=message):
    state, _ = export_torch.state_dict(variables, cfg, 'official')
    export_torch.check_expressible(state, cfg, 'official')
  # The trunk alone is still a plain ResNet18; the rest is named as left out.
  state, dropped = export_torch.state_dict(variables, cfg, 'torchvision')
  export_torch.check_expressible(state, cfg, 'torchvision')
  assert 'conv1.weight' in state and not any(k.startswith(('cbt', 'projetion')) for k in state)
  if field == 'predictor':
    assert any(k.startswith('params/predictor/') for k in dropped)


def test_refusals_leave_no_file(pretrained_dir, tmp_path, monkeypatch):
  with pytest.raises(checkpoint.CheckpointError, match='does not exist'):
    export_torch.export(str(tmp_path / 'nowhere'), str(tmp_path / 'a.pth'))
  with pytest.raises(checkpoint.CheckpointError, match=r'directory .*missing.* does not exist'):
    export_torch.export(pretrained_dir, str(tmp_path / 'missing' / 'a.pth'))
  with pytest.raises(ValueError, match="unknown format 'onnx'"):
    export_torch.export(pretrained_dir, str(tmp_path / 'a.pth'), 'onnx')
  (tmp_path / 'old.pth').write_bytes(b'x')
  with pytest.raises(checkpoint.CheckpointError, match='refusing to overwrite'):
    export_torch.export(pretrained_dir, str(tmp_path / 'old.pth'))

  def failing_save(obj, f):
    f.write(b'half')
    raise OSError('disk full')
  monkeypatch.setattr(torch, 'save', failing_save)
  with pytest.raises(OSError, match='disk full'):
    export_torch.export(pretrained_dir, str(tmp_path / 'b.pth'))
  assert sorted(os.listdir(tmp_path)) == ['old.pth']


def test_cli_names_the_left_out_blocks_and_fails_cleanly(pretrained_dir, tmp_path):
  cmd = [sys.executable, '-m', 'mlvicx_jax.tools.export_torch', f'--checkpoint={pretrained_dir}',
         f'--output={tmp_path / "rn18.pth"}', '--format=torchvision']
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  assert 'context blocks cbt1, cbt2, cbt3, cbt4, cbt5' in run.stdout, run.stdout
  assert 'cbt3.sam.conv1.weight' in run.stdout and 'fc.weight' in run.stdout
  bad = subprocess.run(cmd[:3] + [f'--checkpoint={tmp_path / "nowhere"}',
                                  f'--output={tmp_path / "x.pth"}'], cwd=REPO,
                       capture_output=True, text=True, check=False)
  assert bad.returncode != 0 and 'Traceback' not in bad.stderr
  assert 'nowhere does not exist' in bad.stderr, bad.stderr[-2000:]
