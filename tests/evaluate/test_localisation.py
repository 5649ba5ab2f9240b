"""Localisation maths vs hand-built maps, hand-counted pixels and hand-worked AP."""

import numpy as np
import pytest

from mlvicx_jax.evaluate import localisation


def _single_peak(shape=(10, 10), row=4, col=6):
  heatmap = np.zeros(shape)
  heatmap[row, col] = 1.0  # centre (x, y) = (col + 0.5, row + 0.5)
  return heatmap


# --- box_mask ----------------------------------------------------------------


def test_box_mask_hand_counted():
  # Centres x in {0.5, ..., 4.5}, y in {0.5, ..., 3.5}; box x in [1, 3], y in [0, 3].
  expected = np.array([[0, 1, 1, 0, 0],
                       [0, 1, 1, 0, 0],
                       [0, 1, 1, 0, 0],
                       [0, 0, 0, 0, 0]], dtype=bool)
  np.testing.assert_array_equal(localisation.box_mask((4, 5), (1, 0, 2, 3)),
                                expected)


def test_box_mask_rejects_degenerate_box():
  with pytest.raises(ValueError, match='box'):
    localisation.box_mask((4, 4), (0, 0, 0, 2))


# --- pointing game -----------------------------------------------------------


@pytest.mark.parametrize('box, hit', [
    ((6, 4, 1, 1), True),         # exactly the peak pixel
    ((6.5, 4.5, 2, 2), True),     # peak centre (6.5, 4.5) on the closed corner
    ((6.6, 4, 2, 2), False),      # left edge just right of the centre
    ((0, 0, 6.4, 10), False),     # right edge just left of the centre
    ((0, 0, 10, 4.4), False),     # bottom edge just above the centre
    ((4, 6, 1, 1), False),        # rows and columns swapped
])
def test_pointing_game_single_peak(box, hit):
  assert localisation.pointing_game_hit(_single_peak(), box) is hit


def test_pointing_game_rows_are_y_on_a_wide_map():
  heatmap = _single_peak(shape=(6, 10), row=1, col=8)
  assert localisation.pointing_game_hit(heatmap, (8, 1, 1, 1))
  assert not localisation.pointing_game_hit(heatmap, (1, 4, 1, 5))


def test_tolerance_turns_a_miss_into_a_hit():
  heatmap = _single_peak()
  box = (7, 4, 2, 1)  # left edge 7 > centre 6.5
  assert not localisation.pointing_game_hit(heatmap, box)
  assert not localisation.pointing_game_hit(heatmap, box, tolerance_px=0.25)
  assert localisation.pointing_game_hit(heatmap, box, tolerance_px=1)


def test_map_without_positive_evidence_is_a_miss():
  whole_image = (0, 0, 10, 10)
  assert not localisation.pointing_game_hit(np.zeros((10, 10)), whole_image)
  negative = -np.ones((10, 10))
  negative[4, 6] = -0.1  # a unique maximum, but below zero
  assert not localisation.pointing_game_hit(negative, whole_image)
  assert localisation.heatmap_iou(np.zeros((10, 10)), whole_image, 0.5) == 0.0
  assert localisation.heatmap_iou(negative, whole_image, 0.5) == 0.0


def test_tied_maxima_hit_if_any_is_inside():
  heatmap = np.zeros((10, 10))
  heatmap[1, 1] = heatmap[8, 8] = 2.0
  assert localisation.pointing_game_hit(heatmap, (8, 8, 1, 1))
  assert localisation.pointing_game_hit(heatmap, (1, 1, 1, 1))
  assert not localisation.pointing_game_hit(heatmap, (4, 4, 2, 2))


def test_nan_heatmap_raises():
  heatmap = _single_peak()
  heatmap[0, 0] = np.nan
  with pytest.raises(ValueError, match='heatmap'):
    localisation.pointing_game_hit(heatmap, (0, 0, 1, 1))
  with pytest.raises(ValueError, match='heatmap'):
    localisation.heatmap_iou(heatmap, (0, 0, 1, 1), 0.5)


# --- heatmap IoU -------------------------------------------------------------


def test_heatmap_iou_hand_counted():
  heatmap = np.full((10, 10), 0.2)
  heatmap[2:5, 3:7] = 1.0  # >= 0.5 * max: rows 2-4, cols 3-6, 12 pixels
  box = (3, 3, 4, 4)       # rows 3-6, cols 3-6: 16 pixels, 2 x 4 overlap
  assert localisation.heatmap_iou(heatmap, box, 0.5) == pytest.approx(
      8 / (12 + 16 - 8))


def test_heatmap_iou_threshold_is_inclusive_and_relative():
  heatmap = np.zeros((4, 4))
  heatmap[0, 0] = 4.0
  heatmap[0, 1] = 2.0  # exactly 0.5 * max: inside the predicted region
  assert localisation.heatmap_iou(heatmap, (0, 0, 2, 1), 0.5) == 1.0
  # Above 0.5 only the peak is predicted: 1 of the 2 box pixels.
  assert localisation.heatmap_iou(heatmap, (0, 0, 2, 1), 0.6) == 0.5


@pytest.mark.parametrize('threshold', [0.0, -0.1, 1.5])
def test_heatmap_iou_rejects_bad_threshold(threshold):
  with pytest.raises(ValueError, match='threshold'):
    localisation.heatmap_iou(_single_peak(), (0, 0, 1, 1), threshold)


def test_heatmap_iou_rejects_bad_box():
  with pytest.raises(ValueError, match='box'):
    localisation.heatmap_iou(_single_peak(), (0, 0, 3, -1), 0.5)


# --- connected boxes ---------------------------------------------------------


def test_connected_boxes_two_blobs_eight_connected():
  heatmap = np.zeros((10, 10))
  heatmap[1:3, 1:4] = 0.6
  heatmap[2, 2] = 0.8             # blob A: rows 1-2, cols 1-3, peak 0.8
  heatmap[5:8, 6:8] = 0.7
  heatmap[8, 8] = 1.0             # touches (7, 7) only diagonally
  heatmap[0, 9] = 0.3             # below 0.5 * max: no box
  boxes = localisation.connected_boxes(heatmap, 0.5)
  assert boxes == [((6.0, 5.0, 3.0, 4.0), 1.0),   # blob B: rows 5-8, cols 6-8
                   ((1.0, 1.0, 3.0, 2.0), 0.8)]
  assert localisation.connected_boxes(np.zeros((4, 4)), 0.5) == []


# --- box IoU -----------------------------------------------------------------


@pytest.mark.parametrize('a, b, expected', [
    ((0, 0, 2, 2), (1, 1, 2, 2), 1 / 7),     # overlap 1, union 4 + 4 - 1
    ((0, 0, 4, 4), (1, 1, 2, 2), 4 / 16),    # contained
    ((0, 0, 2, 2), (2, 0, 2, 2), 0.0),       # touching edges
    ((0, 0, 2, 2), (5, 5, 1, 1), 0.0),       # disjoint
    ((1.5, 2.5, 3, 2), (1.5, 2.5, 3, 2), 1.0),
    ((0, 0, 10, 10), (1, 1, 10, 10), 81 / 119),
])
def test_box_iou_hand_cases(a, b, expected):
  assert localisation.box_iou(a, b) == pytest.approx(expected)
  assert localisation.box_iou(b, a) == pytest.approx(expected)


# --- average precision -------------------------------------------------------


def test_average_precision_hand_worked():
  truths = [[(0, 0, 10, 10), (20, 0, 10, 10)],
            [(0, 0, 10, 10), (50, 50, 10, 10)]]   # 4 truths; the last is never found
  predictions = [
      [((0, 0, 10, 10), 0.9),     # TP (first truth)
       ((1, 1, 10, 10), 0.8),     # IoU 81/119 with a truth already taken: FP
       ((20, 0, 10, 10), 0.5)],   # TP
      [((0, 0, 10, 10), 0.7),     # TP
       ((30, 30, 5, 5), 0.6)],    # FP
  ]
  # Ranked: TP FP TP FP TP. (recall, precision): (1/4, 1), (1/4, 1/2),
  # (2/4, 2/3), (2/4, 1/2), (3/4, 3/5). Envelope at recall 1/4, 2/4, 3/4:
  # 1, 2/3, 3/5, and 0 up to recall 1. AP = (1 + 2/3 + 3/5) / 4 = 17/30.
  assert localisation.average_precision(predictions, truths, 0.5) == (
      pytest.approx(17 / 30))


def test_average_precision_uses_the_precision_envelope():
  truths = [[(0, 0, 1, 1), (10, 0, 1, 1), (20, 0, 1, 1)]]
  predictions = [[((0, 0, 1, 1), 0.9), ((50, 50, 1, 1), 0.8),
                  ((10, 0, 1, 1), 0.7), ((20, 0, 1, 1), 0.6)]]
  # Ranked: TP FP TP TP. (recall, precision): (1/3, 1), (1/3, 1/2),
  # (2/3, 2/3), (3/3, 3/4). The envelope lifts recall 2/3 to 3/4:
  # AP = (1 + 3/4 + 3/4) / 3 = 5/6 (29/36 without the envelope).
  assert localisation.average_precision(predictions, truths, 0.5) == (
      pytest.approx(5 / 6))


def test_average_precision_matches_the_highest_iou_truth():
  truths = [[(0, 0, 10, 10), (5, 0, 10, 10)]]
  # The first prediction has IoU 60/140 with truth 0 and 90/110 with truth 1:
  # it must take truth 1, leaving truth 0 for the exact second prediction.
  # Taking truth 0 instead would make the second an FP (IoU 50/150 < 0.4).
  predictions = [[((4, 0, 10, 10), 0.9), ((0, 0, 10, 10), 0.8)]]
  assert localisation.average_precision(predictions, truths, 0.4) == 1.0


def test_average_precision_perfect_and_empty():
  truths = [[(0, 0, 5, 5), (10, 10, 4, 4)], [(3, 3, 2, 2)], []]
  perfect = [[(box, 1.0 - 0.1 * i) for i, box in enumerate(image)]
             for image in truths]
  assert localisation.average_precision(perfect, truths, 0.5) == 1.0
  assert localisation.average_precision([[], [], []], truths, 0.5) == 0.0
  assert np.isnan(localisation.average_precision([[]], [[]], 0.5))


def test_average_precision_rejects_mismatched_images():
  with pytest.raises(ValueError, match='images'):
    localisation.average_precision([[]], [[], []], 0.5)
