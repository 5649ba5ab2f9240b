"""Parity of the Flax model with PyTorch modules of the official architecture.

Random torch weights are ported through `import_torch` (by name) and outputs
compared at 224 px in train mode (batch statistics) and eval mode (perturbed
running statistics).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

import torch_reference as tr  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax import pretrained  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlvicx_jax.tools import import_torch  # pylint: disable=g-import-not-at-top,wrong-import-position

TOL = 1e-4


def rel_err(actual, expected):
  expected = expected.detach().numpy()
  return float(np.linalg.norm(np.asarray(actual) - expected) / np.linalg.norm(expected))


def nhwc(x):
  return jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


@pytest.fixture(scope='module')
def official(tmp_path_factory):
  torch.manual_seed(0)
  ref = tr.MLVICXTorch()
  tr.randomise_bn_stats(ref)
  out = tmp_path_factory.mktemp('ckpt') / 'mlvicx'
  # The trainer's checkpoint format: {'steps', 'model', 'optimizer'}.
  import_torch.import_state_dict({'steps': 7, 'model': ref.state_dict(), 'optimizer': {}}, str(out))
  return ref, pretrained.load(str(out))


@pytest.fixture(scope='module')
def images():
  return torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_parameter_count_matches_official(official):
  ref, loaded = official
  ours = sum(v.size for v in jax.tree.leaves(loaded.variables['params']))
  theirs = sum(p.numel() for p in ref.parameters())
  # torchvision's ResNet18 has 11,689,512 parameters; minus its 512x1000+1000 fc.
  backbone = sum(v.size for v in jax.tree.leaves(loaded.variables['params']['backbone']))
  cbam = sum(2 * c * c // 2 + 2 * 49 for c in (64, 64, 128, 256, 512))
  print(f'MLVICX parameters: flax {ours:,}, official-architecture torch {theirs:,}; '
        f'backbone+context blocks {backbone:,}')
  assert ours == theirs
  assert backbone == 11_689_512 - 513_000 + cbam


def test_eval_mode_matches_torch(official, images):
  ref, loaded = official
  ref.eval()
  with torch.no_grad():
    z, m = ref(images)
  out = loaded.embed(nhwc(images))
  assert rel_err(out['z'], z) < TOL
  assert rel_err(out['m'], m) < TOL
  assert out['features'].shape == (4, 512)


def test_train_mode_matches_torch(official, images):
  ref, loaded = official
  ref.train()
  with torch.no_grad():
    z, m = ref(images)
  out, _ = loaded.model.apply(loaded.variables, nhwc(images), train=True,
                              mutable=['batch_stats'])
  assert rel_err(out['z'], z) < TOL
  assert rel_err(out['m'], m) < TOL


def test_naive_branch_equals_folded(official, images):
  """The official resize-first computation and the folded one agree."""
  _, loaded = official
  cfg = loaded.model_config.copy_and_resolve_references()
  cfg.multilevel_impl = 'naive'
  naive = models.build_model(cfg).apply(loaded.variables, nhwc(images[:2]), train=False)
  folded = loaded.embed(nhwc(images[:2]))
  np.testing.assert_allclose(naive['m'], folded['m'], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('train', [False, True])
def test_resnet18_matches_torchvision_layout(tmp_path, train):
  torch.manual_seed(2)
  ref = tr.TorchResNet()
  tr.randomise_bn_stats(ref)
  import_torch.import_state_dict(ref.state_dict(), str(tmp_path / 'rn18'))
  loaded = pretrained.load(str(tmp_path / 'rn18'))
  assert not loaded.model_config.context_blocks
  assert set(loaded.variables['params']) == {'backbone'}
  x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(3))
  ref.train(train)
  with torch.no_grad():
    expected = ref(x)
  trunk = models.build_backbone(loaded.model_config, keep_context_blocks=False)
  out, _ = trunk.apply(loaded.backbone_variables(), nhwc(x), train=train, mutable=['batch_stats'])
  assert rel_err(out['features'], expected) < TOL


def test_paper_variant_concat_and_2048_heads(tmp_path):
  """Paper-text variant (concat, 2048 heads) imports and matches too (small input)."""
  torch.manual_seed(4)
  ref = tr.MLVICXTorch(head=(2048,) * 3, aggregation='concat')
  tr.randomise_bn_stats(ref)
  import_torch.import_state_dict({'online': ref.encoder.state_dict()}, str(tmp_path / 'paper'))
  loaded = pretrained.load(str(tmp_path / 'paper'))
  assert loaded.model_config.aggregation == 'concat'
  assert tuple(loaded.model_config.global_head) == (2048,) * 3
  x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(5))
  ref.eval()
  with torch.no_grad():
    z, m = ref(x)
  out = loaded.embed(nhwc(x))
  assert rel_err(out['z'], z) < TOL
  assert rel_err(out['m'], m) < TOL
