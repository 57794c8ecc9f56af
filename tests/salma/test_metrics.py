"""Hand-checked cases for ``salma.metrics`` and the public benchmark conventions it follows.

Expected values are worked out by hand in each test (or by a deliberately naive restatement of
the reference definition), never by calling the function under test a second time.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from salma.metrics import (
    aggregate_expressions,
    aggregate_revos,
    boundary_f,
    boundary_map,
    boundary_radius,
    ciou_giou,
    disk_footprint,
    jaccard,
    pixel_accuracy,
    robustness,
    video_jf,
    video_revos,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _mask(shape: tuple[int, int], *pixels: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for y, x in pixels:
        m[y, x] = True
    return m


def _box(shape: tuple[int, int], top: int, left: int, height: int, width: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top : top + height, left : left + width] = True
    return m


def _naive_boundary(mask: np.ndarray) -> np.ndarray:
    """DAVIS ``_seg2bmap`` restated pixel by pixel: which neighbours each pixel is compared with."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue  # the bottom-right pixel is never a boundary
            if y == h - 1:
                neighbours = [(y, x + 1)]
            elif x == w - 1:
                neighbours = [(y + 1, x)]
            else:
                neighbours = [(y, x + 1), (y + 1, x), (y + 1, x + 1)]
            out[y, x] = any(mask[n] != mask[y, x] for n in neighbours)
    return out


def _naive_boundary_f(pred: np.ndarray, gt: np.ndarray, radius: float) -> float:
    """F with the disk dilation written as 'within Euclidean distance radius' of the other edge."""
    pe = np.argwhere(_naive_boundary(pred))  # (Np, 2)
    ge = np.argwhere(_naive_boundary(gt))  # (Ng, 2)
    if len(pe) == 0 and len(ge) == 0:
        return 1.0
    if len(pe) == 0 or len(ge) == 0:
        return 0.0  # (P, R) is (1, 0) or (0, 1)
    d2 = ((pe[:, None, :] - ge[None, :, :]) ** 2).sum(-1)  # (Np, Ng) squared distances
    precision = float((d2.min(axis=1) <= radius**2).mean())
    recall = float((d2.min(axis=0) <= radius**2).mean())
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------
# jaccard
# ---------------------------------------------------------------------------------------------


def test_jaccard_empty_cases():
    empty = np.zeros((7, 9), dtype=bool)
    obj = _box((7, 9), 2, 3, 2, 2)
    assert jaccard(empty, empty) == 1.0  # DAVIS: empty union -> 1
    assert jaccard(empty, obj) == 0.0  # empty prediction
    assert jaccard(obj, empty) == 0.0  # empty ground truth


def test_jaccard_one_pixel_and_full_frame():
    a = _mask((5, 5), (2, 2))
    b = _mask((5, 5), (2, 3))
    assert jaccard(a, a) == 1.0
    assert jaccard(a, b) == 0.0
    full = np.ones((5, 5), dtype=bool)
    assert jaccard(full, full) == 1.0
    assert jaccard(full, a) == 1 / 25


def test_jaccard_hand_example_odd_size():
    # 3x5 frame: prediction 6 pixels (rows 0-1, cols 0-2), ground truth 4 pixels (rows 1-2,
    # cols 1-2); they share (1,1), (1,2): I = 2, U = 6 + 4 - 2 = 8.
    pred = _box((3, 5), 0, 0, 2, 3)
    gt = _box((3, 5), 1, 1, 2, 2)
    assert jaccard(pred, gt) == 2 / 8


def test_jaccard_accepts_uint8_0_255_like_the_reference_astype_bool():
    pred = _box((6, 6), 1, 1, 3, 3)
    gt = _box((6, 6), 2, 2, 3, 3)
    assert jaccard(pred.astype(np.uint8) * 255, gt.astype(np.uint8)) == jaccard(pred, gt) == 4 / 14


def test_jaccard_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        jaccard(np.zeros((4, 5), bool), np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        jaccard(np.zeros((2, 4, 5), bool), np.zeros((2, 4, 5), bool))


# ---------------------------------------------------------------------------------------------
# boundary map, disk, radius
# ---------------------------------------------------------------------------------------------


def test_boundary_map_single_pixel_is_the_2x2_block_towards_the_origin():
    got = boundary_map(_mask((6, 7), (3, 4)))
    expected = _mask((6, 7), (2, 3), (2, 4), (3, 3), (3, 4))
    np.testing.assert_array_equal(got, expected)


def test_boundary_map_corners():
    # Top-left pixel: only the pixel itself differs from its right/lower neighbours.
    np.testing.assert_array_equal(boundary_map(_mask((4, 5), (0, 0))), _mask((4, 5), (0, 0)))
    # Bottom-right pixel: _seg2bmap forces that pixel to 0; its three upper-left neighbours remain.
    got = boundary_map(_mask((4, 5), (3, 4)))
    np.testing.assert_array_equal(got, _mask((4, 5), (2, 3), (2, 4), (3, 3)))


def test_boundary_map_rectangle_is_a_ring_and_full_frame_has_none():
    h, w, top, left, bh, bw = 11, 13, 3, 4, 5, 6
    got = boundary_map(_box((h, w), top, left, bh, bw))
    # Ring of the (bh+1)x(bw+1) block starting one pixel up-left of the box: 2*bh + 2*bw pixels.
    outer = _box((h, w), top - 1, left - 1, bh + 1, bw + 1)
    inner = _box((h, w), top, left, bh - 1, bw - 1)
    np.testing.assert_array_equal(got, outer & ~inner)
    assert got.sum() == 2 * bh + 2 * bw
    assert not boundary_map(np.ones((h, w), bool)).any()  # the image border is not an edge
    assert not boundary_map(np.zeros((h, w), bool)).any()


def test_boundary_map_matches_naive_restatement_on_random_odd_masks():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (1, 6), (5, 1), (9, 13), (17, 11)]:
        m = rng.random(shape) < 0.4
        np.testing.assert_array_equal(boundary_map(m), _naive_boundary(m))


def test_disk_footprint_equals_skimage_definition():
    # skimage.morphology.disk(r) (strict_radius=True, no decomposition):
    # L = arange(-r, r + 1); X, Y = meshgrid(L, L); X**2 + Y**2 <= r**2, as uint8.
    np.testing.assert_array_equal(disk_footprint(0), [[1]])
    np.testing.assert_array_equal(disk_footprint(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    np.testing.assert_array_equal(
        disk_footprint(2),
        [
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
        ],
    )
    d8 = disk_footprint(8.0)  # DAVIS passes np.ceil(...), a float
    assert d8.dtype == np.uint8 and d8.shape == (17, 17)
    assert d8.sum() == 197  # lattice points with x^2 + y^2 <= 64 (Gauss circle, r = 8)
    expected = [[int(x * x + y * y <= 64) for x in range(-8, 9)] for y in range(-8, 9)]
    np.testing.assert_array_equal(d8, expected)
    np.testing.assert_array_equal(d8, disk_footprint(8))


def test_boundary_radius_rule():
    # 0.008 * sqrt(480^2 + 854^2) = 0.008 * 979.65 = 7.84 -> ceil -> 8
    assert boundary_radius((480, 854)) == 8.0
    assert boundary_radius((10, 10)) == 1.0  # 0.008 * 14.1 = 0.11 -> 1
    assert boundary_radius((480, 854), bound_th=3) == 3  # >= 1 means pixels
    assert boundary_radius((1080, 1920)) == math.ceil(0.008 * math.hypot(1080, 1920)) == 18


# ---------------------------------------------------------------------------------------------
# boundary_f
# ---------------------------------------------------------------------------------------------


def test_boundary_f_empty_rules():
    empty = np.zeros((20, 30), dtype=bool)
    obj = _box((20, 30), 5, 5, 6, 8)
    assert boundary_f(empty, empty) == 1.0  # P = R = 1
    assert boundary_f(empty, obj) == 0.0  # P = 1, R = 0
    assert boundary_f(obj, empty) == 0.0  # P = 0, R = 1
    assert boundary_f(obj, obj) == 1.0


def test_boundary_f_full_frame_masks_have_no_boundary():
    full = np.ones((20, 30), dtype=bool)
    empty = np.zeros((20, 30), dtype=bool)
    obj = _box((20, 30), 5, 5, 6, 8)
    assert boundary_f(full, full) == 1.0
    # DAVIS quirk kept on purpose: full frame vs empty frame is two empty boundaries -> F = 1
    # (while J = 0).
    assert boundary_f(full, empty) == 1.0
    assert jaccard(full, empty) == 0.0
    assert boundary_f(full, obj) == 0.0  # prediction boundary empty, ground truth not


def test_boundary_f_one_pixel_objects_on_a_small_frame():
    # 10x10 frame: radius ceil(0.008 * 14.1) = 1, a plus-shaped disk.
    shape = (10, 10)
    pred = _mask(shape, (5, 4))  # boundary: rows 4-5, cols 3-4
    # One column right: every edge pixel is within 1 of the other edge.
    assert boundary_f(pred, _mask(shape, (5, 5))) == 1.0
    # Two columns right (edge cols 5-6): col 4 of pred and col 5 of gt match, P = R = 2/4.
    assert boundary_f(pred, _mask(shape, (5, 6))) == 0.5
    # Three columns right: nothing within 1 pixel.
    assert boundary_f(pred, _mask(shape, (5, 7))) == 0.0
    # One step diagonally: pred edge (4,3) is sqrt(2) > 1 from gt edge (5,4); the other three
    # match. P = R = 3/4, so the disk is Euclidean, not a square.
    assert boundary_f(pred, _mask(shape, (6, 5))) == 0.75


def test_boundary_f_tolerance_at_480x854():
    shape = (480, 854)  # radius 8
    gt = _box(shape, 100, 200, 100, 100)
    shifted = {d: np.roll(gt, d, axis=1) for d in (1, 8, 9, 20, 50)}
    assert boundary_f(shifted[1], gt) == 1.0
    assert boundary_f(shifted[8], gt) == 1.0  # exactly at the radius still matches
    assert boundary_f(shifted[9], gt) < 1.0
    assert boundary_f(shifted[50], gt) < boundary_f(shifted[20], gt) < boundary_f(shifted[9], gt)
    # The exact values agree with the distance-based restatement.
    for d in (9, 20, 50):
        sub = (slice(90, 215), slice(190, 365))  # a crop holding both boxes, same distances
        expected = _naive_boundary_f(shifted[d][sub], gt[sub], radius=8)
        assert boundary_f(shifted[d], gt) == pytest.approx(expected, abs=1e-12)


def test_boundary_f_hand_value_for_a_20_pixel_shift():
    # 100x100 boxes shifted 20 columns at radius 8. Each box's edge is a 101x101 ring (400 px).
    # Prediction edge pixels within 8 of the ground-truth ring:
    #  - top and bottom rows (101 px each): cols up to 8 past the gt ring's right column -> 89 each
    #  - left column (inside the gt box, 20 cols from its left edge, 80 from its right): only the
    #    rows within 8 of the top or bottom rows -> 9 + 9 px, of which the 2 ends are already
    #    counted in the top/bottom rows -> 16 new
    #  - right column (20 cols past the gt right edge): none
    # Matches: 89 + 89 + 16 = 194 of 400; by symmetry recall is the same, so F = 194/400.
    shape = (480, 854)
    gt = _box(shape, 100, 200, 100, 100)
    pred = _box(shape, 100, 220, 100, 100)
    assert boundary_f(pred, gt) == pytest.approx(194 / 400, abs=1e-12)


def test_boundary_f_matches_naive_restatement_on_random_odd_masks():
    rng = np.random.default_rng(1)
    for shape, bound_th in [((9, 13), 0.008), ((31, 45), 0.05), ((25, 17), 2), ((40, 33), 0.1)]:
        for _ in range(3):
            pred = rng.random(shape) < 0.3
            gt = rng.random(shape) < 0.3
            radius = boundary_radius(shape, bound_th)
            assert boundary_f(pred, gt, bound_th) == pytest.approx(
                _naive_boundary_f(pred, gt, radius), abs=1e-12
            )


# ---------------------------------------------------------------------------------------------
# ciou / giou
# ---------------------------------------------------------------------------------------------


def test_ciou_giou_hand_example():
    shape = (6, 8)
    pairs = [
        # I = 2, U = 6 -> IoU 1/3
        (_box(shape, 0, 0, 2, 2), _box(shape, 0, 1, 2, 2)),
        # identical 10-pixel masks: I = U = 10 -> IoU 1
        (_box(shape, 3, 0, 2, 5), _box(shape, 3, 0, 2, 5)),
        # both empty: I = U = 0 -> IoU 1 (no-object target)
        (np.zeros(shape, bool), np.zeros(shape, bool)),
        # missing prediction = empty mask against 6 pixels: I = 0, U = 6 -> IoU 0
        (None, _box(shape, 0, 5, 3, 2)),
    ]
    ciou, giou = ciou_giou(pairs)
    assert ciou == pytest.approx((2 + 10 + 0 + 0) / (6 + 10 + 0 + 6))  # 6/11
    assert giou == pytest.approx((1 / 3 + 1 + 1 + 0) / 4)  # 7/12
    assert ciou != pytest.approx(giou)  # cIoU weights big objects, gIoU every sentence alike


def test_ciou_giou_none_prediction_is_an_empty_mask():
    shape = (5, 5)
    obj = _box(shape, 1, 1, 2, 2)
    empty = np.zeros(shape, bool)
    assert ciou_giou([(None, obj)]) == ciou_giou([(empty, obj)]) == (0.0, 0.0)
    assert ciou_giou([(None, empty)]) == (0.0, 1.0)  # empty vs empty; total union 0 -> cIoU 0


def test_ciou_giou_takes_a_generator_and_checks_input():
    shape = (4, 4)
    gen = ((_box(shape, 0, 0, 2, 2), _box(shape, 0, 0, 2, 2)) for _ in range(3))
    assert ciou_giou(gen) == (1.0, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        ciou_giou([])
    with pytest.raises(ValueError, match="shapes differ"):
        ciou_giou([(np.zeros((4, 4), bool), np.zeros((4, 5), bool))])


# ---------------------------------------------------------------------------------------------
# video_jf and aggregation
# ---------------------------------------------------------------------------------------------


def test_video_jf_means_over_frames():
    shape = (3, 12, 15)  # T, H, W
    gt = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    gt[0, 2:6, 3:9] = pred[0, 2:6, 3:9] = True  # frame 0 identical: J = F = 1
    gt[1, 4:8, 4:8] = True  # frame 1 prediction empty: J = F = 0
    # frame 2 both empty: J = F = 1
    scores = video_jf(pred, gt)
    assert scores == pytest.approx({"J": 2 / 3, "F": 2 / 3, "J&F": 2 / 3})


def test_video_jf_mixes_j_and_f():
    # One frame, 480x854, box shifted by 1 pixel: F = 1 at radius 8, J = 99*100 / (101*100).
    gt = _box((480, 854), 100, 200, 100, 100)[None]
    pred = np.roll(gt, 1, axis=2)
    scores = video_jf(pred, gt)
    assert scores["J"] == pytest.approx(9900 / 10100)
    assert scores["F"] == 1.0
    assert scores["J&F"] == pytest.approx((9900 / 10100 + 1.0) / 2)


def test_video_jf_checks_input():
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        video_jf(np.zeros((4, 4), bool), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="at least one frame"):
        video_jf(np.zeros((0, 4, 4), bool), np.zeros((0, 4, 4), bool))


def test_aggregate_expressions_mean_of_expression_means():
    per_expression = [{"J": 0.5, "F": 0.7, "J&F": 0.6}, {"J": 1.0, "F": 0.9, "J&F": 0.95}]
    assert aggregate_expressions(per_expression) == pytest.approx(
        {"J": 0.75, "F": 0.8, "J&F": 0.775}
    )
    with_ar = [{"J": 0.5, "F": 0.5, "A": 0.9, "R": 0.8}, {"J": 0.0, "F": 1.0, "A": 0.7, "R": 0.6}]
    assert aggregate_expressions(with_ar) == pytest.approx(
        {"J": 0.25, "F": 0.75, "A": 0.8, "R": 0.7, "J&F": 0.5}
    )
    with pytest.raises(ValueError, match="at least one"):
        aggregate_expressions([])
    with pytest.raises(ValueError, match="no \\['F'\\]"):
        aggregate_expressions([{"J": 1.0}])


# ---------------------------------------------------------------------------------------------
# ReVOS: A, R and the summary
# ---------------------------------------------------------------------------------------------


def test_pixel_accuracy_hand_example():
    # 4x5 frame: pred 3 px, gt 4 px, 2 shared -> 1 + 2 pixels disagree -> A = 17/20.
    pred = _mask((4, 5), (0, 0), (0, 1), (3, 4))
    gt = _mask((4, 5), (0, 0), (0, 1), (1, 0), (1, 1))
    assert pixel_accuracy(pred, gt) == 17 / 20
    empty = np.zeros((4, 5), bool)
    assert pixel_accuracy(empty, empty) == 1.0
    assert pixel_accuracy(np.ones((4, 5), bool), empty) == 0.0


def test_robustness_definition():
    shape = (6, 6)
    fg = _box(shape, 0, 0, 2, 5)  # 10 foreground pixels
    gt = _box(shape, 0, 0, 1, 3)
    pred = gt | _mask(shape, (5, 5), (4, 5))  # 2 false positives outside gt
    assert robustness(pred, gt, fg) == 1 - 2 / (10 + 1e-6)  # reference's exact expression
    assert robustness(pred, gt, fg) == pytest.approx(0.8)
    assert robustness(gt, gt, fg) == 1.0  # no false positives
    assert robustness(np.zeros(shape, bool), gt, fg) == 1.0  # missing the target is J's business
    many = np.ones(shape, bool)  # 36 - 3 = 33 false positives > 10 -> clipped at 0
    assert robustness(many, gt, fg) == 0.0
    empty = np.zeros(shape, bool)
    assert robustness(empty, empty, empty) == 1.0
    assert robustness(_mask(shape, (2, 2)), empty, empty) == 0.0


def test_video_revos_frame_means():
    shape = (2, 4, 5)
    gt = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    fg = np.zeros(shape, bool)
    gt[0, 0, 0:2] = pred[0, 0, 0:2] = True  # frame 0 perfect
    fg[0, 0:2, :] = True
    fg[1, 0:2, :] = True  # frame 1: 10 fg pixels, gt empty, one false positive
    pred[1, 3, 4] = True
    scores = video_revos(pred, gt, fg)
    assert scores["J"] == pytest.approx((1 + 0) / 2)
    assert scores["A"] == pytest.approx((1 + 19 / 20) / 2)
    assert scores["R"] == pytest.approx((1 + (1 - 1 / (10 + 1e-6))) / 2)
    assert set(scores) == {"J", "F", "J&F", "A", "R"}


def test_aggregate_revos_rounds_each_expression_then_averages_groups():
    per_expression = [
        {"J": 0.123456, "F": 0.5, "A": 0.9, "R": 0.8},  # referring: J 12.35
        {"J": 0.5, "F": 0.25, "A": 0.7, "R": 0.6},  # referring: J 50.0
        {"J": 0.00004, "F": 0.00004, "A": 1.0, "R": 1.0},  # reasoning: 0.004% rounds to 0.0
        {"J": 0.9, "F": 0.9, "A": 0.9, "R": 0.9},  # type 2: left out
    ]
    out = aggregate_revos(per_expression, [0, 0, 1, 2])
    ref = out["referring"]
    assert ref["J"] == pytest.approx((12.35 + 50.0) / 2)
    assert ref["F"] == pytest.approx(37.5)
    assert ref["A"] == pytest.approx(80.0) and ref["R"] == pytest.approx(70.0)
    assert ref["J&F"] == pytest.approx((31.175 + 37.5) / 2)
    rea = out["reasoning"]
    assert rea == pytest.approx({"J": 0.0, "F": 0.0, "A": 100.0, "R": 100.0, "J&F": 0.0})
    overall = out["overall"]
    for key in ("J", "F", "A", "R", "J&F"):
        assert overall[key] == pytest.approx((ref[key] + rea[key]) / 2)


def test_aggregate_revos_needs_both_groups_and_matching_lengths():
    scores = [{"J": 1.0, "F": 1.0, "A": 1.0, "R": 1.0}]
    with pytest.raises(ValueError, match="reasoning"):
        aggregate_revos(scores, [0])
    with pytest.raises(ValueError, match="type ids"):
        aggregate_revos(scores, [0, 1])


# ---------------------------------------------------------------------------------------------
# Library hygiene
# ---------------------------------------------------------------------------------------------


def test_metrics_imports_no_platform_packages():
    code = (
        "import sys, salma.metrics\n"
        "bad = sorted(m for m in ('ray', 'mlflow', 'deepspeed') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
