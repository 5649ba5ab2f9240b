"""The train step on 8 emulated CPU devices equals the 1-device step (same global batch),
also when the step makes the views from uint8 images (aug.on='device').

Runs in subprocesses so that this test process keeps its single CPU device.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def run_helper(*args):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, os.path.join(REPO, 'tests', 'train', 'sharded_step.py'),
                        *args], env=env, capture_output=True, text=True, check=False, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_plain_trunk_sharded_equals_single_device():
  """Without context blocks every tensor agrees to float tolerance."""
  r = run_helper('8', 'plain')
  assert r['devices'] == 8
  assert r['loss_n'] == pytest.approx(r['loss_1'], rel=1e-5)
  assert r['params_rel'] < 1e-4
  assert r['batch_stats_rel'] < 1e-4


def test_mlvicx_sharded_loss_trajectory_equals_single_device():
  """With context blocks the losses and BN statistics agree.

  Their channel/spatial max ops tie on post-ReLU zeros, so some gradients
  (e.g. the stem's BN scale) change by O(1) under any float reordering, even
  a batch permutation on one device; parameters are therefore compared
  through the loss they give at the next step, not tensor by tensor.
  """
  r = run_helper('8', 'cbam')
  assert r['loss_n'] == pytest.approx(r['loss_1'], rel=1e-5)
  assert r['batch_stats_rel'] < 1e-4


def test_device_augmentation_sharded_equals_single_device():
  """Views keyed by stream position: 8 devices make the same views and the same step."""
  r = run_helper('8', 'plain', 'device')
  assert r['devices'] == 8
  assert r['views_max_diff'] <= 1e-5
  assert r['loss_n'] == pytest.approx(r['loss_1'], rel=1e-5)
  assert r['params_rel'] < 1e-4
