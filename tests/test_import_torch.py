"""import_torch refuses anything it cannot map completely, naming the tensor."""
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip('torch')

import torch_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import pretrained  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.tools import import_torch  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
