"""Update-energy shares on hand-built energy maps and masks."""

import math

import numpy as np
import pytest

from salma.drift_score import DriftTerms, update_energy_shares, drift_terms, mask_coverage, region_energy


def _mask(shape, rows, cols):
    m = np.zeros(shape, dtype=bool)
    m[rows, cols] = True
    return m


def test_coverage_is_the_area_fraction_of_each_cell():
    # 8x8 frame onto a 2x2 grid: each cell is a 4x4 block; the mask fills half of the top-left one.
    mask = _mask((8, 8), slice(0, 2), slice(0, 4))
    np.testing.assert_allclose(mask_coverage(mask, (2, 2)), [[0.5, 0.0], [0.0, 0.0]])
    assert mask_coverage(mask, (8, 8)).sum() == mask.sum()  # same size: the mask itself


def test_region_energy_weights_cells_by_coverage():
    energy = np.array([[4.0, 1.0], [0.0, 2.0]])
    mask = _mask((4, 4), slice(0, 2), slice(0, 4))  # covers the top row of cells entirely
    assert region_energy(energy, mask) == pytest.approx(5.0)
    assert region_energy(energy, None) == 0.0


def test_all_energy_on_the_target_gives_share_one():
    energy = np.zeros((1, 4, 4))
    energy[0, :2, :2] = 3.0
    target = [_mask((8, 8), slice(0, 4), slice(0, 4))]
    distractor = [_mask((8, 8), slice(4, 8), slice(4, 8))]
    terms = drift_terms(energy, target, distractor)
    assert (terms.target, terms.distractor, terms.total) == (pytest.approx(12.0), 0.0, pytest.approx(12.0))
    assert terms.target_share == 1.0 and terms.density_share == 1.0


def test_share_sums_over_key_frames_before_dividing():
    # Frame 0: target 1, distractor 3; frame 1: target 3, distractor 0 -> 4 / (4 + 3).
    energy = np.zeros((2, 2, 2))
    energy[0, 0, 0], energy[0, 1, 1] = 1.0, 3.0
    energy[1, 0, 0] = 3.0
    target = [_mask((2, 2), 0, 0)] * 2
    distractor = [_mask((2, 2), 1, 1), None]  # the distractor is not visible on frame 1
    terms = drift_terms(energy, target, distractor)
    assert terms.target_share == pytest.approx(4 / 7)
    assert (terms.target_area, terms.distractor_area) == (2.0, 1.0)
    # Per unit area: target 4/2 = 2, distractor 3/1 = 3 -> 2 / 5.
    assert terms.density_share == pytest.approx(0.4)


def test_uniform_energy_gives_the_area_ratio_and_density_one_half():
    energy = np.ones((1, 4, 4))
    target = [_mask((4, 4), 0, slice(0, 1))]  # 1 cell
    distractor = [_mask((4, 4), slice(2, 4), slice(0, 3))]  # 6 cells
    terms = drift_terms(energy, target, distractor)
    assert terms.target_share == pytest.approx(1 / 7)
    assert terms.density_share == pytest.approx(0.5)


def test_split_score_is_the_mean_of_sample_shares_and_skips_zero_energy():
    samples = [
        DriftTerms(target=3.0, distractor=1.0, total=8.0, target_area=1.0, distractor_area=1.0),  # 0.75
        DriftTerms(target=1.0, distractor=1.0, total=2.0, target_area=1.0, distractor_area=1.0),  # 0.5
        DriftTerms(target=0.0, distractor=0.0, total=5.0),  # gamma = 0 or all energy outside: no share
    ]
    score = update_energy_shares(samples)
    assert score["target_share"] == pytest.approx(0.625)
    assert score["density_share"] == pytest.approx(0.625)
    assert score["outside_share"] == pytest.approx((0.5 + 0.0) / 2)
    assert (score["scored"], score["unscored"]) == (2.0, 1.0)


def test_no_scorable_sample_gives_nan():
    score = update_energy_shares([DriftTerms(0.0, 0.0, 0.0)])
    assert math.isnan(score["target_share"]) and score["scored"] == 0.0 and score["unscored"] == 1.0


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="one of each per key frame"):
        drift_terms(np.ones((2, 2, 2)), [np.ones((2, 2), bool)], [None, None])
    with pytest.raises(ValueError, match="non-negative"):
        drift_terms(-np.ones((1, 2, 2)), [np.ones((2, 2), bool)], [None])
    with pytest.raises(ValueError, match=r"\(K, h, w\)"):
        drift_terms(np.ones((2, 2)), [np.ones((2, 2), bool)], [None])


def test_library_does_not_import_platform_packages():
    import subprocess
    import sys

    code = "import sys, salma.drift_score; print(sorted({'ray', 'mlflow', 'deepspeed', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
