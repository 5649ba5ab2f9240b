"""import_torch refuses anything it cannot map completely, naming the tensor."""
import argparse
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip('torch')

import torch_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import REPO
from mlvicx_jax import checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import pretrained  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.tools import import_torch  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='module')
def small_state():
  torch.manual_seed(0)
  return tr.Encoder(layers=(1, 1, 1, 1), width=16, head=(32,) * 3, ml_head=(32,) * 3,
                    ml_channels=8).state_dict()


def test_missing_tensor_is_named(small_state, tmp_path):
  state = dict(small_state)
  del state['cbt3.sam.conv1.weight']
  with pytest.raises(checkpoint.CheckpointError, match=r'cbt3\.sam\.conv1\.weight'):
    import_torch.import_state_dict({'online': state}, str(tmp_path / 'out'))


def test_unexpected_tensor_is_named(small_state, tmp_path):
  state = dict(small_state)
  state['extra.weight'] = torch.zeros(3)
  with pytest.raises(checkpoint.CheckpointError, match=r'extra\.weight'):
    import_torch.import_state_dict({'online': state}, str(tmp_path / 'out'))


def test_wrong_shape_is_named(small_state, tmp_path):
  state = dict(small_state)
  state['encoder.4.0.conv2.weight'] = torch.zeros(16, 16, 5, 5)
  with pytest.raises(checkpoint.CheckpointError, match=r'encoder\.4\.0\.conv2\.weight'):
    import_torch.import_state_dict({'online': state}, str(tmp_path / 'out'))


def test_lazily_missing_level_convs_are_explained(small_state, tmp_path):
  state = {k: v for k, v in small_state.items() if not k.startswith('resize_project.convs')}
  with pytest.raises(checkpoint.CheckpointError, match='created lazily'):
    import_torch.import_state_dict({'online': state}, str(tmp_path / 'out'))


def test_every_value_is_ported(small_state, tmp_path):
  """Each torch tensor lands at its flax place (checked on a few by hand)."""
  import_torch.import_state_dict({'online': small_state}, str(tmp_path / 'ok'))
  v = pretrained.load(str(tmp_path / 'ok')).variables
  np.testing.assert_array_equal(v['params']['backbone']['conv1']['kernel'],
                                small_state['encoder.0.weight'].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(v['batch_stats']['backbone']['layer2_0']['downsample_bn']['var'],
                                small_state['encoder.5.0.downsample.1.running_var'].numpy())
  np.testing.assert_array_equal(v['params']['multilevel']['proj3']['kernel'],
                                small_state['resize_project.convs.3.weight'].numpy()[:, :, 0, 0].T)
  np.testing.assert_array_equal(v['params']['global_head']['linear2']['kernel'],
                                small_state['projetion.l2.0.weight'].numpy().T)


def test_cli_writes_loadable_checkpoint_and_refuses_overwrite(small_state, tmp_path):
  src = tmp_path / 'snap.pth'
  torch.save({'online': small_state}, src)
  out = tmp_path / 'orbax'
  cmd = [sys.executable, '-m', 'mlvicx_jax.tools.import_torch', f'--input={src}', f'--output={out}']
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  loaded = pretrained.load(str(out))
  assert loaded.embed(np.zeros((1, 64, 64, 3), np.float32))['m'].shape == (1, 32)
  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
  assert again.returncode != 0 and 'not empty' in again.stderr
  bad = tmp_path / 'bad.pth'
  bad.write_bytes(b'not a checkpoint')
  run = subprocess.run([sys.executable, '-m', 'mlvicx_jax.tools.import_torch', f'--input={bad}',
                        f'--output={tmp_path / "x"}'], cwd=REPO, capture_output=True, text=True)
  assert run.returncode != 0 and 'bad.pth' in run.stderr


def test_init_from_fills_the_trunk_and_keeps_the_rest(tmp_path):
  """--config.init_from: imported ResNet tensors replace the init, the rest is kept."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mlvicx_jax import models  # pylint: disable=g-import-not-at-top
  from mlvicx_jax.train import loop  # pylint: disable=g-import-not-at-top
  torch.manual_seed(5)
  ref = tr.TorchResNet(layers=(1, 1, 1, 1), width=16)
  import_torch.import_state_dict(ref.state_dict(), str(tmp_path / 'imnet'))
  cfg = models.model_config('tiny')
  model = models.build_model(cfg)
  # A random tree of the model's shapes stands in for init (compiling init costs ~30 s).
  rng = np.random.default_rng(0)
  init = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False)))
  merged, count = loop.merge_pretrained(init, str(tmp_path / 'imnet'))
  # 8 convs + 10 BNs x (scale, bias, mean, var) of the tiny ResNet: 48 tensors.
  assert count == sum(1 for k in ref.state_dict() if not k.endswith('num_batches_tracked')
                      and not k.startswith('fc.'))
  np.testing.assert_array_equal(merged['params']['backbone']['layer3_0']['conv1']['kernel'],
                                ref.layer3[0].conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(merged['batch_stats']['backbone']['bn1']['mean'],
                                ref.bn1.running_mean.numpy())
  np.testing.assert_array_equal(merged['params']['backbone']['cbt2']['sam']['conv']['kernel'],
                                init['params']['backbone']['cbt2']['sam']['conv']['kernel'])
  np.testing.assert_array_equal(merged['params']['global_head']['linear1']['kernel'],
                                init['params']['global_head']['linear1']['kernel'])
  wide_cfg = models.model_config('tiny')
  wide_cfg.width = 64  # the official trunk width; the tiny heads keep the test fast
  wide = models.build_model(wide_cfg)
  wide_init = jax.eval_shape(lambda: wide.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                                               train=False))
  with pytest.raises(checkpoint.CheckpointError, match=r"imnet: .* has shape \(16,.*the model expects \(64,"):
    loop.merge_pretrained(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), wide_init),
                          str(tmp_path / 'imnet'))


def _ml_state(size=64, seed=0):
  """A tiny official-layout encoder whose multi-level branch resizes to `size`."""
  torch.manual_seed(seed)
  ref = tr.Encoder(layers=(1, 1, 1, 1), width=16, head=(32,) * 3, ml_head=(32,) * 3,
                   ml_channels=8, ml_size=size)
  tr.randomise_bn_stats(ref, seed)
  return ref.eval()


def test_multilevel_size_32_matches_torch_and_is_recorded(tmp_path):
  """The size has no tensor: only the right flag value reproduces torch's m."""
  ref = _ml_state(size=32)
  images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    _, m = ref(images)
  m = m.numpy()
  nhwc = images.numpy().transpose(0, 2, 3, 1)
  for flag, name in ((32, 'flag32'), (None, 'default')):
    _, cfg, meta = import_torch.import_state_dict({'online': ref.state_dict()},
                                                  str(tmp_path / name), multilevel_size=flag)
    loaded = pretrained.load(str(tmp_path / name))
    assert loaded.meta['multilevel_size'] == meta['multilevel_size'] == cfg.multilevel_size
    assert cfg.multilevel_pool == 4
    diff = np.linalg.norm(np.asarray(loaded.embed(nhwc)['m']) - m)
    if flag:
      assert loaded.meta['multilevel_size'] == 32
      assert loaded.meta['multilevel_size_from'].startswith('flag --multilevel_size')
      assert diff / np.linalg.norm(m) < 1e-4
    else:
      assert loaded.meta['multilevel_size'] == 64
      assert 'default' in loaded.meta['multilevel_size_from']
      # m is mostly per-feature BN offsets; the wrong size moves what varies with the image.
      assert diff / np.linalg.norm(m) > 1e-4
      assert diff / np.linalg.norm(m - m.mean(0)) > 0.05


def test_stored_out_size_is_used_and_checked_against_the_flag(tmp_path):
  """An out_size saved in args/config beats the default and must agree with the flag."""
  state = _ml_state().state_dict()
  src = tmp_path / 'with_args.pth'
  torch.save({'online': state, 'args': argparse.Namespace(out_size=32, lr=0.2)}, src)
  obj = import_torch.load_torch(str(src))  # weights_only, namespace allowed
  _, cfg, meta = import_torch.import_state_dict(obj, str(tmp_path / 'a'))
  assert cfg.multilevel_size == meta['multilevel_size'] == 32
  assert 'args.out_size' in meta['multilevel_size_from']
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'--multilevel_size=64 contradicts .*args\.out_size = 32'):
    import_torch.import_state_dict(obj, str(tmp_path / 'b'), multilevel_size=64)
  with pytest.raises(checkpoint.CheckpointError, match=r'config\.out_size = 48'):
    import_torch.import_state_dict({'online': state, 'config': {'out_size': 48}},
                                   str(tmp_path / 'c'), multilevel_size=32)


def test_pool_is_read_off_the_head_width(small_state):
  """in_features = channels x pool^2 (x levels for concat); anything else names the tensor."""
  key = 'resize_project.conv_head.projection.2.weight'
  state = {k: v.numpy() for k, v in small_state.items()}
  cases = {8 * 2 * 2: (2, 'sum'), 8 * 5 * 4 * 4: (4, 'concat'), 8 * 3 * 3: (3, 'sum')}
  for width, expected in cases.items():
    state[key] = np.zeros((32, width), np.float32)
    cfg = import_torch.infer_model_config(state, 'official', 64)
    assert (cfg.multilevel_pool, cfg.aggregation) == expected
  state[key] = np.zeros((32, 8 * 15), np.float32)  # 15 is no square, nor 5 x a square
  with pytest.raises(checkpoint.CheckpointError, match=r'projection\.2\.weight.* 120 '):
    import_torch.infer_model_config(state, 'official', 64)


def test_multilevel_size_below_pool_or_not_positive_is_an_error(small_state, tmp_path):
  obj = {'online': small_state}
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'--multilevel_size=3 is smaller than the 4x4 .*projection\.2\.weight'):
    import_torch.import_state_dict(obj, str(tmp_path / 'a'), multilevel_size=3)
  for bad in (0, -64, 2.5, True):
    with pytest.raises(checkpoint.CheckpointError, match=r'--multilevel_size=.*positive integer'):
      import_torch.import_state_dict(obj, str(tmp_path / 'b'), multilevel_size=bad)
  # A model without a multi-level branch ignores the flag.
  plain = tr.TorchResNet(layers=(1, 1, 1, 1), width=8).state_dict()
  _, cfg, meta = import_torch.import_state_dict(plain, str(tmp_path / 'c'), multilevel_size=0)
  assert not cfg.multilevel and meta['multilevel_size'] is None
  assert 'ignored' in meta['multilevel_size_from']


def test_cli_prints_the_multilevel_size_used(small_state, tmp_path):
  src = tmp_path / 'snap.pth'
  torch.save({'online': small_state}, src)
  run = subprocess.run([sys.executable, '-m', 'mlvicx_jax.tools.import_torch', f'--input={src}',
                        f'--output={tmp_path / "o"}', '--multilevel_size=32'],
                       cwd=REPO, capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  assert 'multi-level resize size 32 from flag --multilevel_size' in run.stdout, run.stdout
  assert 'tensors do not store it' in run.stdout
  assert pretrained.load(str(tmp_path / 'o')).meta['multilevel_size'] == 32


class _Opaque:
  """A class a weights-only load refuses: only pickle could rebuild it."""


def test_bad_inputs_are_one_line_each_and_never_advise_pickle(small_state, tmp_path):
  good = tmp_path / 'good.pth'
  torch.save({'online': small_state}, good)
  data = good.read_bytes()
  (tmp_path / 'empty.pth').write_bytes(b'')
  (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
  (tmp_path / 'image.pth').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(100))
  torch.save({'online': small_state, 'extra': _Opaque()}, tmp_path / 'pickled.pth')
  unknown = dict(small_state, **{'mystery.weight': torch.zeros(3)})
  torch.save({'online': unknown}, tmp_path / 'unknown.pth')
  cases = {'missing.pth': 'no such file', 'empty.pth': 'is not a PyTorch checkpoint',
           'cut.pth': 'is not a PyTorch checkpoint', 'image.pth': 'is not a PyTorch checkpoint',
           'pickled.pth': 'only an unrestricted pickle load', 'unknown.pth': 'mystery.weight'}
  for name, expected in cases.items():
    run = subprocess.run([sys.executable, '-m', 'mlvicx_jax.tools.import_torch',
                          f'--input={tmp_path / name}', f'--output={tmp_path / ("out_" + name)}'],
                         cwd=REPO, capture_output=True, text=True, check=False)
    errors = [line for line in run.stderr.splitlines() if line.startswith('error:')]
    assert run.returncode == 1, (name, run.stderr[-2000:])
    assert len(errors) == 1 and expected in errors[0], (name, run.stderr[-2000:])
    assert str(tmp_path / name) in errors[0] or name == 'unknown.pth', errors[0]
    for banned in ('Traceback', 'weights_only=False', 'USAGE', 'flags:'):
      assert banned not in run.stderr + run.stdout, (name, banned, run.stderr[-2000:])
