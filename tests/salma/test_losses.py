"""SALMA losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from salma.config import LossConfig
from salma.losses import (
    boundary_loss,
    candidate_bce_dice,
    dense_bce_dice_per_mask,
    iou_prediction_loss,
    linear_ramp,
    lm_loss,
    mask_bce_dice_loss,
    min_loss_multimask_loss,
    point_sample,
    sample_uncertain_points,
    text_mask_contrastive_loss,
)


def _square_masks(num: int, size: int = 32) -> torch.Tensor:
    """(num, size, size) bool: a different axis-aligned square per mask."""
    masks = torch.zeros(num, size, size, dtype=torch.bool)
    for i in range(num):
        top, left = 2 + 3 * i, 4 + 2 * i
        masks[i, top : top + 10 + i, left : left + 8 + i] = True
    return masks


def _saturated_logits(masks: torch.Tensor, magnitude: float = 30.0) -> torch.Tensor:
    return masks.float() * 2 * magnitude - magnitude


def test_default_weights_match_the_design() -> None:
    d = LossConfig()
    assert (d.bce_weight, d.dice_weight, d.dice_eps) == (2.0, 0.5, 1.0)
    assert d.num_points == 12544
    assert (d.tmc_weight, d.tmc_temperature, d.boundary_weight) == (0.1, 0.15, 0.05)
    assert (d.aux_warmup_fraction, d.gamma_warmup_fraction) == (0.2, 0.1)


def test_loss_functions_take_their_defaults_from_the_config() -> None:
    import inspect

    d = LossConfig()
    params = inspect.signature(mask_bce_dice_loss).parameters
    for name in ("num_points", "oversample_ratio", "importance_sample_ratio", "bce_weight", "dice_weight", "dice_eps"):
        assert params[name].default == getattr(d, name), name
    assert inspect.signature(text_mask_contrastive_loss).parameters["temperature"].default == d.tmc_temperature


# --- point sampling -------------------------------------------------------------------------


def test_point_sample_reads_pixel_centres() -> None:
    image = torch.arange(12.0).view(1, 1, 3, 4)
    # Pixel (row 1, column 2) has its centre at x = 2.5/4, y = 1.5/3.
    coords = torch.tensor([[[2.5 / 4, 1.5 / 3], [0.5 / 4, 0.5 / 3]]])
    torch.testing.assert_close(point_sample(image, coords), torch.tensor([[[6.0, 0.0]]]))


def test_point_sample_border_is_not_blended_with_zero() -> None:
    ones = torch.ones(1, 1, 4, 4)
    corners = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    torch.testing.assert_close(point_sample(ones, corners), torch.ones(1, 1, 3))


def test_sampler_returns_the_most_uncertain_points() -> None:
    logits = torch.full((2, 1, 32, 32), 10.0)
    logits[0, :, :, :8] = 0.0  # mask 0: uncertain in the left quarter
    logits[1, :, 24:, :] = -0.01  # mask 1: uncertain in the bottom quarter
    g = torch.Generator().manual_seed(0)
    coords = sample_uncertain_points(
        logits, 20, oversample_ratio=10.0, importance_sample_ratio=0.75, generator=g
    )
    assert coords.shape == (2, 20, 2)
    assert ((coords >= 0) & (coords <= 1)).all()
    uncertain = coords[:, :15]  # int(0.75 · 20) uncertain points come first
    assert (uncertain[0, :, 0] < 8 / 32).all()
    assert (uncertain[1, :, 1] > 24 / 32).all()
    # The remaining points are uniform: not all of them in a quarter of the map.
    random = coords[:, 15:]
    assert not ((random[0, :, 0] < 8 / 32).all() and (random[1, :, 1] > 24 / 32).all())


def test_sampler_all_random_when_importance_is_zero() -> None:
    logits = torch.zeros(3, 1, 8, 8)
    coords = sample_uncertain_points(logits, 7, importance_sample_ratio=0.0)
    assert coords.shape == (3, 7, 2)


# --- mask BCE + Dice ------------------------------------------------------------------------


def test_perfect_saturated_prediction_has_zero_bce_and_dice() -> None:
    # Constant masks: no boundary, so the bilinearly sampled target is exactly 0 or 1.
    gt = torch.stack([torch.ones(16, 16), torch.zeros(16, 16)])
    losses = mask_bce_dice_loss(_saturated_logits(gt.bool()), gt, torch.ones(2), num_points=64)
    assert losses["mask_bce"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["mask_dice"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("importance", "ratio"), [(0.0, 0.1), (0.75, 0.25)])
def test_perfect_shaped_prediction_beats_a_wrong_one(importance: float, ratio: float) -> None:
    # Points within a pixel of the boundary see a bilinearly blended (soft) target, so even a
    # perfect prediction is not at zero there; importance sampling picks exactly those points,
    # hence the looser ratio.
    gt = _square_masks(3)
    weight = torch.ones(3)
    kwargs = {"num_points": 256, "importance_sample_ratio": importance}
    g = torch.Generator().manual_seed(0)
    perfect = mask_bce_dice_loss(_saturated_logits(gt), gt, weight, generator=g, **kwargs)
    wrong = mask_bce_dice_loss(_saturated_logits(gt.flip(-1)), gt, weight, generator=g, **kwargs)
    assert perfect["mask_dice"] < ratio * wrong["mask_dice"]
    assert perfect["mask_bce"] < ratio * wrong["mask_bce"]


def test_bce_and_dice_hand_computed_on_constant_maps() -> None:
    z = 0.8
    pred = torch.full((1, 8, 8), z)
    gt = torch.ones(1, 16, 16)  # a different resolution: sampled at the same normalised coords
    k = 50
    losses = mask_bce_dice_loss(pred, gt, torch.ones(1), num_points=k)
    p = 1 / (1 + math.exp(-z))
    expected_bce = LossConfig().bce_weight * -math.log(p)
    expected_dice = LossConfig().dice_weight * (1 - (2 * k * p + 1) / (k * p + k + 1))
    assert losses["mask_bce"].item() == pytest.approx(expected_bce, rel=1e-5)
    assert losses["mask_dice"].item() == pytest.approx(expected_dice, rel=1e-5)
    unweighted = mask_bce_dice_loss(
        pred, gt, torch.ones(1), num_points=k, bce_weight=1.0, dice_weight=1.0
    )
    assert unweighted["mask_bce"].item() == pytest.approx(expected_bce / LossConfig().bce_weight, rel=1e-5)


def test_zero_weight_pairs_keep_gradient_but_not_value() -> None:
    # Constant maps make the value independent of where the random points fall.
    good_pred = torch.full((1, 8, 8), 1.5)
    good_gt = torch.ones(1, 8, 8)
    alone = mask_bce_dice_loss(good_pred, good_gt, torch.ones(1), num_points=32)

    pred = torch.cat([good_pred, torch.randn(1, 8, 8) * 5]).requires_grad_(True)
    gt = torch.cat([good_gt, torch.zeros(1, 8, 8)])
    both = mask_bce_dice_loss(pred, gt, torch.tensor([1.0, 0.0]), num_points=32)
    for key in ("mask_bce", "mask_dice"):
        assert both[key].item() == pytest.approx(alone[key].item(), rel=1e-6)
    (both["mask_bce"] + both["mask_dice"]).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert pred.grad[0].abs().sum() > 0
    assert torch.count_nonzero(pred.grad[1]) == 0


def test_all_zero_weights_give_zero_loss_with_gradient() -> None:
    pred = torch.randn(2, 8, 8, requires_grad=True)
    losses = mask_bce_dice_loss(pred, torch.ones(2, 8, 8), torch.zeros(2), num_points=16)
    total = losses["mask_bce"] + losses["mask_dice"]
    assert total.item() == 0.0
    total.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_mask_loss_gradients_are_finite_with_bool_gt() -> None:
    gt = _square_masks(2, 24)
    pred = torch.randn(2, 12, 12, requires_grad=True)
    losses = mask_bce_dice_loss(pred, gt, torch.ones(2), num_points=100)
    (losses["mask_bce"] + losses["mask_dice"]).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_min_loss_selection_supervises_only_the_best_candidate() -> None:
    gt = _square_masks(2)
    # Pair 0: candidate 2 is the right mask; pair 1: candidate 0. The others are wrong.
    right = _saturated_logits(gt)
    wrong = _saturated_logits(gt.flip(-1))
    candidates = torch.stack(
        [torch.stack([wrong[0], wrong[0], right[0]]), torch.stack([right[1], wrong[1], wrong[1]])]
    ).requires_grad_(True)  # (P=2, M=3, H, W)
    g = torch.Generator().manual_seed(0)
    terms, chosen = min_loss_multimask_loss(candidates, gt, torch.ones(2), num_points=128, generator=g)
    assert chosen.tolist() == [2, 0]
    # The chosen candidates are the perfect ones: far below a wrong prediction's loss (not 0:
    # points near the boundary see a blended target, see above).
    wrong_terms = mask_bce_dice_loss(wrong, gt, torch.ones(2), num_points=128)
    assert terms["mask_dice"] < 0.25 * wrong_terms["mask_dice"]
    assert terms["mask_bce"] < 0.25 * wrong_terms["mask_bce"]
    (terms["mask_bce"] + terms["mask_dice"]).backward()
    grad_per_candidate = candidates.grad.abs().flatten(2).sum(-1)  # (P, M)
    assert (grad_per_candidate[0, :2] == 0).all() and grad_per_candidate[0, 2] > 0
    assert (grad_per_candidate[1, 1:] == 0).all() and grad_per_candidate[1, 0] > 0


def test_min_loss_selection_with_no_pairs() -> None:
    terms, chosen = min_loss_multimask_loss(torch.zeros(0, 3, 8, 8), torch.zeros(0, 8, 8), torch.zeros(0))
    assert terms["mask_bce"].item() == 0.0 and chosen.numel() == 0


def test_iou_prediction_loss_hand_computed() -> None:
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, :4] = True  # top half: 32 pixels
    logits = torch.full((1, 2, 4, 4), -5.0)
    logits[0, 0, :2] = 5.0  # the top half at half resolution: IoU 1
    logits[0, 1, :1] = 5.0  # the top quarter: IoU 4 / 8 = 0.5
    pred_iou = torch.tensor([[0.75, 0.5]], requires_grad=True)
    loss = iou_prediction_loss(pred_iou, logits, gt, torch.ones(1))
    assert loss.item() == pytest.approx((0.25 + 0.0) / 2)
    loss.backward()
    assert pred_iou.grad.tolist() == [[-0.5, 0.0]]  # d|x - 1|/dx / M at x < 1; zero at the exact value


def test_iou_prediction_loss_counts_two_empty_masks_as_iou_one_and_respects_weights() -> None:
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[1, 2:6, 2:6] = True
    logits = torch.full((2, 1, 8, 8), -5.0)  # both candidates empty
    pred_iou = torch.tensor([[0.25], [0.9]])
    # pair 0: empty vs empty → IoU 1, error 0.75; pair 1 (weight 0) is ignored.
    loss = iou_prediction_loss(pred_iou, logits, gt, torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(0.75)


def test_mask_loss_with_no_pairs_is_zero_in_graph() -> None:
    pred = torch.zeros(0, 8, 8, requires_grad=True)
    losses = mask_bce_dice_loss(pred, torch.zeros(0, 8, 8), torch.zeros(0))
    assert losses["mask_bce"].item() == 0.0
    assert losses["mask_bce"].requires_grad


# --- LM loss --------------------------------------------------------------------------------


def test_lm_loss_matches_hand_shifted_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, -100, 3, 1, 6], [-100, 2, -100, 0, -100]])
    # Position l predicts token l+1: supervised targets are labels[:, 1:] at logits[:, :-1].
    rows = [(0, 1, 3), (0, 2, 1), (0, 3, 6), (1, 0, 2), (1, 2, 0)]
    picked = torch.stack([logits[b, pos] for b, pos, _ in rows])
    targets = torch.tensor([t for _, _, t in rows])
    expected = F.cross_entropy(picked, targets)
    torch.testing.assert_close(lm_loss(logits, labels), expected)


def test_lm_loss_without_labels_is_zero_in_graph() -> None:
    logits = torch.randn(1, 4, 5, requires_grad=True)
    loss = lm_loss(logits, torch.full((1, 4), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_lm_loss_accepts_bf16_logits() -> None:
    logits = torch.randn(1, 4, 5).bfloat16()
    labels = torch.tensor([[-100, 1, 2, 3]])
    assert lm_loss(logits, labels).dtype == torch.float32


# --- TMC ------------------------------------------------------------------------------------


def _tmc_case(num: int = 4, channels: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Objects whose mask-pooled features equal their [SEG] embeddings."""
    g = torch.Generator().manual_seed(0)
    seg = torch.randn(num, channels, generator=g)
    masks = _square_masks(num, 32)
    visual = torch.randn(num, channels, 16, 16, generator=g) * 0.01
    small = F.interpolate(masks.float().unsqueeze(1), size=(16, 16), mode="area").squeeze(1) > 0
    for i in range(num):
        visual[i][:, small[i]] = seg[i].unsqueeze(1)
    return seg, visual, masks


def test_tmc_lower_for_matched_than_shuffled_pairs() -> None:
    seg, visual, masks = _tmc_case()
    matched = text_mask_contrastive_loss(seg, visual, masks)
    shuffled = text_mask_contrastive_loss(seg.roll(1, dims=0), visual, masks)
    assert matched < shuffled
    assert matched < 0.5


def test_tmc_hand_computed_two_objects() -> None:
    seg = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    visual = torch.zeros(2, 2, 4, 4)
    visual[0, 0] = 2.0  # object 0's pooled feature: (2, 0) → cosine 1 with seg 0, 0 with seg 1
    visual[1, 0, :2] = 1.0  # object 1 pooled over its top half: (1, 1)
    visual[1, 1, :2] = 1.0
    masks = torch.zeros(2, 4, 4)
    masks[0] = 1.0
    masks[1, :2] = 1.0
    tau = 0.5
    c = 1 / math.sqrt(2)
    sim = torch.tensor([[1.0, c], [0.0, c]]) / tau  # rows: text, columns: masks
    targets = torch.arange(2)
    expected = 0.5 * (F.cross_entropy(sim, targets) + F.cross_entropy(sim.T, targets))
    torch.testing.assert_close(text_mask_contrastive_loss(seg, visual, masks, tau), expected)


def test_tmc_visual_side_is_detached_and_text_gets_gradient() -> None:
    seg, visual, masks = _tmc_case()
    seg.requires_grad_(True)
    visual.requires_grad_(True)
    text_mask_contrastive_loss(seg, visual, masks).backward()
    assert seg.grad is not None and torch.isfinite(seg.grad).all() and seg.grad.abs().sum() > 0
    assert visual.grad is None


def test_tmc_excludes_empty_masks() -> None:
    seg, visual, masks = _tmc_case()
    emptied = torch.cat([masks[:3], torch.zeros_like(masks[3:])])
    with_empty = text_mask_contrastive_loss(seg, visual, emptied)
    without = text_mask_contrastive_loss(seg[:3], visual[:3], masks[:3])
    torch.testing.assert_close(with_empty, without)


def test_tmc_fewer_than_two_objects_is_zero_with_gradient() -> None:
    seg, visual, masks = _tmc_case()
    seg.requires_grad_(True)
    masks = masks.clone()
    masks[1:] = False
    loss = text_mask_contrastive_loss(seg, visual, masks)
    assert loss.item() == 0.0
    loss.backward()
    assert seg.grad is not None


# --- boundary -------------------------------------------------------------------------------


def test_boundary_zero_for_identical_masks() -> None:
    gt = _square_masks(3)
    loss = boundary_loss(_saturated_logits(gt), gt, torch.ones(3))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_boundary_positive_for_shifted_masks_and_gradients_finite() -> None:
    gt = _square_masks(2)
    pred = _saturated_logits(gt.roll(3, dims=-1), magnitude=3.0).requires_grad_(True)
    loss = boundary_loss(pred, gt, torch.ones(2))
    assert loss > 0.01
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_boundary_flat_maps_have_zero_edges_and_finite_gradient() -> None:
    pred = torch.zeros(1, 8, 8, requires_grad=True)
    loss = boundary_loss(pred, torch.zeros(1, 8, 8), torch.ones(1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_boundary_resizes_gt_to_prediction() -> None:
    gt = torch.zeros(1, 64, 64)
    gt[:, 16:48, 16:48] = 1.0
    pred = _saturated_logits(gt[:, ::4, ::4].bool())  # (1, 16, 16), same square
    assert boundary_loss(pred, gt, torch.ones(1)).item() == pytest.approx(0.0, abs=1e-6)


def test_boundary_zero_weight_pair_keeps_gradient_but_not_value() -> None:
    gt = _square_masks(2)
    pred = torch.stack([_saturated_logits(gt[0]), torch.randn(32, 32)]).requires_grad_(True)
    loss = boundary_loss(pred, gt, torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert pred.grad is not None and torch.count_nonzero(pred.grad[1]) == 0


# --- ramp -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "total", "fraction", "expected"),
    [
        (0, 1000, 0.2, 0.0),
        (50, 1000, 0.2, 0.25),
        (200, 1000, 0.2, 1.0),
        (999, 1000, 0.2, 1.0),
        (25, 1000, 0.1, 0.25),
        (0, 1000, 0.0, 1.0),
        (5, 0, 0.2, 1.0),
    ],
)
def test_linear_ramp(step: int, total: int, fraction: float, expected: float) -> None:
    assert linear_ramp(step, total, fraction) == pytest.approx(expected)


def test_linear_ramp_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError):
        linear_ramp(0, 10, 1.5)


def test_object_presence_loss_is_the_weighted_bce_of_mask_not_empty():
    from salma.losses import object_presence_loss

    score = torch.tensor([[2.0], [-1.0], [0.5]])
    gt = torch.zeros(3, 4, 4)
    gt[0, 1, 1] = 1.0  # present; pairs 1 and 2 are empty
    weight = torch.tensor([1.0, 1.0, 0.0])  # the third pair is not supervised
    expected = (
        torch.nn.functional.softplus(torch.tensor(-2.0)) + torch.nn.functional.softplus(torch.tensor(-1.0))
    ) / 2  # BCE(2, 1) = softplus(-2); BCE(-1, 0) = softplus(-1)
    assert torch.allclose(object_presence_loss(score, gt, weight), expected)
    assert object_presence_loss(score[:0], gt[:0], weight[:0]).item() == 0.0


def test_candidate_bce_dice_scores_every_candidate_against_its_objects_mask():
    torch.manual_seed(0)
    candidates = torch.randn(2, 3, 16, 16)
    gt = torch.rand(2, 16, 16) > 0.5
    bce, dice = candidate_bce_dice(candidates, gt)
    assert bce.shape == dice.shape == (2, 3)
    for b in range(2):
        for m in range(3):
            one_bce, one_dice = dense_bce_dice_per_mask(candidates[b, m][None], gt[b][None])
            torch.testing.assert_close(bce[b, m], one_bce[0])
            torch.testing.assert_close(dice[b, m], one_dice[0])
