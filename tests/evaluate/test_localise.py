"""Localisation scoring over many boxes: hand-computed values, intervals and counts."""
import numpy as np
import pytest

from mlvicx_jax.evaluate import localise


def _items():
  """Three boxes on two 10 x 10 maps (values worked out by hand below)."""
  good = np.zeros((10, 10))
  good[2:5, 2:5] = 0.6
  good[3, 3] = 1.0                       # peak inside box (2, 2, 3, 3): its 9 pixels
  wrong = np.zeros((10, 10))
  wrong[1, 1] = 1.0                      # one bright pixel far from box (6, 6, 2, 2)
  blank = np.zeros((10, 10))             # the score fell everywhere: no positive evidence
  return [localise.Item(0, 0, (2, 2, 3, 3), good),
          localise.Item(1, 0, (6, 6, 2, 2), wrong),
          localise.Item(1, 1, (0, 0, 10, 10), blank)]


def test_scores_equal_hand_computed_values():
  out = localise.score(_items(), ['Atelectasis', 'Cardiomegaly'], n_boot=0)
  overall, first = out['overall'], out['per_finding']['Atelectasis']
  # Pointing: only the first box is hit.
  assert overall['pointing_game'] == pytest.approx(1 / 3)
  assert first['pointing_game'] == pytest.approx(1 / 2)
  # IoU at 0.25 / 0.5 of the max: the 3 x 3 block is the box (1); at 0.75 one pixel of 9.
  assert first['iou@0.25'] == pytest.approx(1 / 2)
  assert first['iou@0.75'] == pytest.approx((1 / 9) / 2)
  assert overall['iou@0.5'] == pytest.approx(1 / 3)
  # AP, Atelectasis: region boxes (2,2,3,3) on image 0 (true positive) and (1,1,1,1) on
  # image 1 (false positive), equal peaks, two truths: precision 1 at recall 1/2 -> AP 0.5.
  assert first['ap25'] == pytest.approx(0.5) and first['ap50'] == pytest.approx(0.5)
  # mIoU: best region IoU per truth box: 1 and 0.
  assert first['miou'] == pytest.approx(0.5)
  # Cardiomegaly's blank map: a miss everywhere, counted.
  second = out['per_finding']['Cardiomegaly']
  assert second['pointing_game'] == 0 and second['ap25'] == 0 and second['miou'] == 0
  assert second['no_positive_evidence'] == 1 and overall['no_positive_evidence'] == 1
  assert (overall['num_boxes'], overall['num_images']) == (3, 2)
  # Pooled over findings: one true positive among 3 truths, ranked first -> AP 1/3.
  assert overall['ap50'] == pytest.approx(1 / 3)
  assert overall['ci95'] is None


def test_tolerance_turns_a_near_miss_into_a_hit():
  heatmap = np.zeros((10, 10))
  heatmap[5, 7] = 1.0  # pixel centre (7.5, 5.5), 1.5 px right of box (2, 2, 4, 4)'s edge at 6
  items = [localise.Item(0, 0, (2, 2, 4, 4), heatmap)]
  assert localise.score(items, ['A'], n_boot=0)['overall']['pointing_game'] == 0
  assert localise.score(items, ['A'], n_boot=0, tolerance_px=1.5)['overall']['pointing_game'] == 1


def test_bootstrap_intervals_bracket_the_estimate_and_collapse_when_all_agree():
  rng = np.random.default_rng(0)
  items = []
  for image in range(30):
    heatmap = rng.random((12, 12))
    items.append(localise.Item(image, 0, (3, 3, 5, 5), heatmap))
  out = localise.score(items, ['A'], n_boot=300, seed=1)['overall']
  for key in ('pointing_game', 'iou@0.5', 'ap25', 'miou'):
    low, high = out['ci95'][key]
    assert low <= out[key] <= high and low < high, key
  hits = [localise.Item(i, 0, (0, 0, 12, 12), rng.random((12, 12))) for i in range(10)]
  assert localise.score(hits, ['A'], n_boot=100)['overall']['ci95']['pointing_game'] == [1, 1]


def test_centre_prior_peaks_at_the_centre_and_is_symmetric():
  prior = localise.centre_prior(10, 8)
  assert prior.shape == (10, 8)
  assert np.unravel_index(prior.argmax(), prior.shape) in {(4, 3), (4, 4), (5, 3), (5, 4)}
  np.testing.assert_allclose(prior, prior[::-1, ::-1])
  # Its sd is a quarter of each side: one sd from the centre the value is exp(-1/2).
  assert localise.centre_prior(400, 400)[200 + 100, 200] == pytest.approx(np.exp(-0.5), rel=0.02)
