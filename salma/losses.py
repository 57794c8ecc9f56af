"""SALMA's training losses, as pure functions of tensors.

- Mask loss: sigmoid BCE (×2.0) and Dice (×0.5, eps 1) on uncertainty-sampled points, the
  Mask2Former recipe (Cheng et al. 2022; detectron2's ``point_sample`` and
  ``get_uncertain_point_coords_with_randomness``) with the weights, point count and ratios Sa2VA
  trains with (12544 points, oversample 3, importance 0.75).
- LLM next-token cross-entropy on the answer tokens.
- Text–mask contrastive loss (TMC): symmetric InfoNCE between the ``[SEG]`` prompt embeddings and
  mask-pooled pre-MBA features (×0.1, temperature 0.15).
- Boundary loss: L1 between per-sample normalised Sobel edge maps (×0.05).
- ``linear_ramp`` for the auxiliary-loss and MBA-gamma warm-ups.

``mask_bce_dice_loss`` returns its terms already multiplied by their weights (the weights are its
arguments); ``text_mask_contrastive_loss`` and ``boundary_loss`` return the unweighted loss, and
the model multiplies them by ``LossConfig.tmc_weight`` / ``boundary_weight`` times the ramp.

Every loss that takes per-pair ``weight`` averages as ``Σ w·l / Σ w``: a pair of weight 0 still
enters the graph (its parameters get a zero, not a missing, gradient, so DeepSpeed's gradient
reduction never waits for a parameter that did not take part) but does not change the value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from salma.config import LossConfig

# The defaults of every weight and sampling setting below are ``LossConfig``'s, the one place
# they are defined (with where they come from).
_DEFAULT = LossConfig()

IGNORE_INDEX = -100

# Smallest weight sum a weighted mean divides by: with all weights 0 the numerator is exactly 0,
# so the mean is 0 (and in the graph) instead of NaN.
_MIN_WEIGHT_SUM = 1e-6
# Sobel magnitude sqrt(g² + eps) keeps the gradient finite where the map is flat.
_SOBEL_EPS = 1e-12
_EDGE_NORM_EPS = 1e-6


def point_sample(input: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``input`` at normalised point coordinates.

    Args:
        input: (N, C, H, W).
        coords: (N, K, 2) points as (x, y) in [0, 1] over the whole map (0 and 1 are the outer
            edges of the border pixels, i.e. ``align_corners=False``).

    Returns:
        (N, C, K).

    detectron2's ``point_sample``, except ``padding_mode="border"`` instead of zeros: with zero
    padding, points in the outer half-pixel ring blend with 0, which pulls confident logits
    towards 0 (so uncertainty sampling wastes points on the image border) and ground truth towards
    background there.
    """
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # (N, K, 1, 2) in [-1, 1]
    sampled = F.grid_sample(
        input, grid.to(input.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )  # (N, C, K, 1)
    return sampled.squeeze(3)


@torch.no_grad()
def sample_uncertain_points(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float = _DEFAULT.oversample_ratio,
    importance_sample_ratio: float = _DEFAULT.importance_sample_ratio,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose points where a mask prediction is uncertain, plus uniformly random points.

    Mask2Former's ``get_uncertain_point_coords_with_randomness``: draw
    ``num_points·oversample_ratio`` uniform candidates, keep the
    ``num_points·importance_sample_ratio`` with the smallest ``|logit|`` (closest to the decision
    boundary), and fill the rest with fresh uniform points so that confident regions are still
    supervised. No gradient: the points are chosen on the prediction, not learned.

    Args:
        logits: (P, 1, H, W) mask logits.
        num_points: K, points per mask.
        oversample_ratio: >= 1.
        importance_sample_ratio: in [0, 1].
        generator: optional RNG on ``logits``' device, for reproducible draws.

    Returns:
        (P, K, 2) coordinates (x, y) in [0, 1]; the uncertain points come first.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio={oversample_ratio} must be >= 1.")
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(f"importance_sample_ratio={importance_sample_ratio} must be in [0, 1].")
    num_masks = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    device = logits.device

    candidates = torch.rand(num_masks, num_candidates, 2, device=device, generator=generator)
    candidate_logits = point_sample(logits.float(), candidates)  # (P, 1, K·ratio)
    uncertainty = -candidate_logits.abs().squeeze(1)  # (P, K·ratio)
    chosen = uncertainty.topk(num_uncertain, dim=1).indices  # (P, K_uncertain)
    uncertain = candidates.gather(1, chosen.unsqueeze(-1).expand(-1, -1, 2))  # (P, K_uncertain, 2)
    random = torch.rand(num_masks, num_random, 2, device=device, generator=generator)
    return torch.cat([uncertain, random], dim=1)  # (P, K, 2)


def mask_bce_dice_per_mask(
    pred_logits: torch.Tensor,
    gt: torch.Tensor,
    *,
    num_points: int = _DEFAULT.num_points,
    oversample_ratio: float = _DEFAULT.oversample_ratio,
    importance_sample_ratio: float = _DEFAULT.importance_sample_ratio,
    dice_eps: float = _DEFAULT.dice_eps,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted point-sampled BCE and Dice of each mask.

    Points are chosen on the prediction (``sample_uncertain_points``, no gradient); the ground
    truth is sampled bilinearly at the same normalised coordinates, so it may have a different
    resolution from the prediction. Dice is mmdet's "naive" Dice per mask,
    ``1 - (2·Σpg + eps) / (Σp + Σg + eps)``, as Sa2VA uses it; BCE is the mean over a mask's
    points. Computed in float32.

    Args:
        pred_logits: (P, H, W) mask logits.
        gt: (P, Hg, Wg) ground truth, bool or float in [0, 1].

    Returns:
        ``(bce, dice)``, each (P,).
    """
    pred = pred_logits.float().unsqueeze(1)  # (P, 1, H, W)
    target = gt.to(device=pred.device, dtype=torch.float32).unsqueeze(1)  # (P, 1, Hg, Wg)
    coords = sample_uncertain_points(
        pred, num_points, oversample_ratio, importance_sample_ratio, generator=generator
    )  # (P, K, 2)
    point_gt = point_sample(target, coords).squeeze(1)  # (P, K)
    point_logits = point_sample(pred, coords).squeeze(1)  # (P, K)
    return _bce_dice(point_logits, point_gt, dice_eps)


def dense_bce_dice_per_mask(
    pred_logits: torch.Tensor, gt: torch.Tensor, *, dice_eps: float = _DEFAULT.dice_eps
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask_bce_dice_per_mask`` on every pixel instead of sampled points.

    The ground truth is resized to the prediction (area averaging, as ``iou_prediction_loss``
    does), so the targets are soft at object edges when the sizes differ.

    Args:
        pred_logits: (P, H, W) mask logits.
        gt: (P, Hg, Wg) ground truth, bool or float in [0, 1].

    Returns:
        ``(bce, dice)``, each (P,).
    """
    target = _resize_masks(gt.to(device=pred_logits.device, dtype=torch.float32), pred_logits.shape[-2:])
    return _bce_dice(pred_logits.float().flatten(1), target.flatten(1), dice_eps)  # (P, H·W) each


def candidate_bce_dice(
    candidates: torch.Tensor, gt: torch.Tensor, *, dice_eps: float = _DEFAULT.dice_eps
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dense_bce_dice_per_mask`` of every one of M candidate masks against its object's mask.

    Args:
        candidates: (B, M, H, W) mask logits.
        gt: (B, H, W) ground truth.

    Returns:
        ``(bce, dice)``, each (B, M).
    """
    b, m = candidates.shape[:2]
    repeated = gt[:, None].expand(-1, m, *gt.shape[-2:]).flatten(0, 1)  # (B·M, H, W)
    bce, dice = dense_bce_dice_per_mask(candidates.flatten(0, 1), repeated, dice_eps=dice_eps)
    return bce.view(b, m), dice.view(b, m)


def _bce_dice(logits: torch.Tensor, target: torch.Tensor, dice_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, K) logits and targets → per-mask mean BCE and mmdet's naive Dice, each (P,)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)
    prob = logits.sigmoid()
    intersection = (prob * target).sum(dim=1)  # (P,)
    total = prob.sum(dim=1) + target.sum(dim=1)  # (P,)
    dice = 1.0 - (2.0 * intersection + dice_eps) / (total + dice_eps)  # (P,)
    return bce, dice


def mask_bce_dice_loss(
    pred_logits: torch.Tensor,
    gt: torch.Tensor,
    weight: torch.Tensor,
    *,
    num_points: int = _DEFAULT.num_points,
    oversample_ratio: float = _DEFAULT.oversample_ratio,
    importance_sample_ratio: float = _DEFAULT.importance_sample_ratio,
    bce_weight: float = _DEFAULT.bce_weight,
    dice_weight: float = _DEFAULT.dice_weight,
    dice_eps: float = _DEFAULT.dice_eps,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Point-sampled sigmoid BCE and Dice (``mask_bce_dice_per_mask``), averaged over pairs as
    ``Σ w·l / Σ w``.

    Args:
        pred_logits: (P, H, W) mask logits.
        gt: (P, Hg, Wg) ground truth, bool or float in [0, 1].
        weight: (P,) per-pair weight (0 for pairs that exist only to keep parameters in the graph).

    Returns:
        ``{"mask_bce": bce_weight·BCE, "mask_dice": dice_weight·Dice}``: scalars, already
        weighted.
    """
    if pred_logits.shape[0] == 0:
        zero = pred_logits.float().sum() * 0.0
        return {"mask_bce": zero, "mask_dice": zero}
    bce, dice = mask_bce_dice_per_mask(
        pred_logits,
        gt,
        num_points=num_points,
        oversample_ratio=oversample_ratio,
        importance_sample_ratio=importance_sample_ratio,
        dice_eps=dice_eps,
        generator=generator,
    )
    w = weight.to(device=bce.device, dtype=torch.float32)
    return {
        "mask_bce": bce_weight * _weighted_mean(bce, w),
        "mask_dice": dice_weight * _weighted_mean(dice, w),
    }


def min_loss_multimask_loss(
    pred_logits: torch.Tensor,
    gt: torch.Tensor,
    weight: torch.Tensor,
    *,
    num_points: int = _DEFAULT.num_points,
    oversample_ratio: float = _DEFAULT.oversample_ratio,
    importance_sample_ratio: float = _DEFAULT.importance_sample_ratio,
    bce_weight: float = _DEFAULT.bce_weight,
    dice_weight: float = _DEFAULT.dice_weight,
    dice_eps: float = _DEFAULT.dice_eps,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Mask loss of the best of M candidate masks per pair (SAM / SAM-2's multimask training).

    Each candidate gets the weighted BCE + Dice of ``mask_bce_dice_per_mask``; only the candidate
    with the lowest loss is back-propagated (the choice itself carries no gradient), so each mask
    token specialises instead of every token being pulled towards the same target. This is how
    SAM-2 trains its multimask outputs (``training/loss_fns.py``: loss of the ``argmin`` candidate);
    the IoU head learns which candidate to pick at inference (``iou_prediction_loss``).

    Args:
        pred_logits: (P, M, H, W) candidate mask logits.
        gt: (P, Hg, Wg) ground truth.
        weight: (P,) per-pair weight.

    Returns:
        (``{"mask_bce", "mask_dice"}`` of the chosen candidates, weighted as
        ``mask_bce_dice_loss``; ``chosen``: (P,) the index of each pair's chosen candidate).
    """
    p, m = pred_logits.shape[:2]
    if p == 0:
        zero = pred_logits.float().sum() * 0.0
        return {"mask_bce": zero, "mask_dice": zero}, torch.zeros(0, dtype=torch.long, device=pred_logits.device)
    repeated_gt = gt.unsqueeze(1).expand(-1, m, *gt.shape[-2:]).flatten(0, 1)  # (P·M, Hg, Wg)
    bce, dice = mask_bce_dice_per_mask(
        pred_logits.flatten(0, 1),
        repeated_gt,
        num_points=num_points,
        oversample_ratio=oversample_ratio,
        importance_sample_ratio=importance_sample_ratio,
        dice_eps=dice_eps,
        generator=generator,
    )
    bce, dice = bce.view(p, m), dice.view(p, m)  # (P, M)
    chosen = (bce_weight * bce + dice_weight * dice).detach().argmin(dim=1)  # (P,)
    rows = torch.arange(p, device=chosen.device)
    w = weight.to(device=bce.device, dtype=torch.float32)
    return {
        "mask_bce": bce_weight * _weighted_mean(bce[rows, chosen], w),
        "mask_dice": dice_weight * _weighted_mean(dice[rows, chosen], w),
    }, chosen


def iou_prediction_loss(
    pred_iou: torch.Tensor, pred_logits: torch.Tensor, gt: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """L1 between the decoder's predicted IoU of each candidate and its actual IoU.

    The actual IoU compares the binarised candidate (logit > 0) with the ground truth resized to
    the candidate's resolution (area averaging, then > 0.5); two empty masks have IoU 1. SAM-2
    trains its IoU head the same way (L1 on the candidates' IoUs, ``iou_use_l1_loss``).

    Args:
        pred_iou: (P, M) predicted IoUs.
        pred_logits: (P, M, H, W) candidate mask logits (no gradient flows through the target).
        gt: (P, Hg, Wg) ground truth.
        weight: (P,) per-pair weight.

    Returns:
        Scalar ``Σ_p w_p·mean_m |iou_pm − IoU_pm| / Σ w``.
    """
    if pred_iou.shape[0] == 0:
        return pred_iou.float().sum() * 0.0
    with torch.no_grad():
        target = _resize_masks(gt.float(), pred_logits.shape[-2:]) > 0.5  # (P, H, W)
        pred = pred_logits > 0  # (P, M, H, W)
        inter = (pred & target[:, None]).flatten(2).sum(-1).float()  # (P, M)
        union = (pred | target[:, None]).flatten(2).sum(-1).float()
        actual = torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))
    per_pair = (pred_iou.float() - actual).abs().mean(dim=1)  # (P,)
    return _weighted_mean(per_pair, weight.to(device=per_pair.device, dtype=torch.float32))


def object_presence_loss(object_score: torch.Tensor, gt: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SAM-2's object-presence loss: BCE of the decoder's object score against "the ground-truth
    mask is not empty".

    SAM-2's video tracker empties every mask whose object score is <= 0 (the object is called
    occluded), so a decoder trained without this term can keep segmenting well in the
    language-conditioned frames while its tracker outputs nothing.

    Args:
        object_score: (P, 1) object-presence logits.
        gt: (P, H, W) ground truth.
        weight: (P,) per-pair weight.

    Returns:
        Scalar ``Σ_p w_p·BCE_p / Σ w``.
    """
    if object_score.shape[0] == 0:
        return object_score.float().sum() * 0.0
    present = gt.flatten(1).any(dim=1).to(torch.float32)
    bce = F.binary_cross_entropy_with_logits(object_score[:, 0].float(), present, reduction="none")
    return _weighted_mean(bce, weight.to(device=bce.device, dtype=torch.float32))


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over the supervised tokens.

    Args:
        logits: (B, L, V) the LLM's logits; position l predicts token l+1.
        labels: (B, L) token ids, ``-100`` where not supervised (everything but the answers).

    Returns:
        Scalar. 0 (still in the graph) when no token is supervised.
    """
    # Upcast as transformers' ForCausalLMLoss does: log-softmax over a large vocabulary in bf16
    # loses the small probabilities.
    shift_logits = logits[:, :-1].float().flatten(0, 1)  # (B·(L-1), V)
    shift_labels = labels[:, 1:].flatten().to(shift_logits.device)  # (B·(L-1),)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    # Dividing a sum by a clamped count (instead of reduction="mean", NaN on an empty selection)
    # keeps the no-label case at 0 without a host sync.
    count = (shift_labels != IGNORE_INDEX).sum().clamp_min(1)
    return total / count


def text_mask_contrastive_loss(
    seg_embed: torch.Tensor,
    visual: torch.Tensor,
    masks: torch.Tensor,
    temperature: float = _DEFAULT.tmc_temperature,
) -> torch.Tensor:
    """Symmetric InfoNCE between ``[SEG]`` prompts and mask-pooled visual features (TMC).

    Object o's visual vector is its feature map averaged under its ground-truth mask (resized to
    the feature map: area averaging when shrinking, so a small object keeps a nonzero weight;
    bilinear when enlarging). Both sides are L2-normalised; the O×O cosine similarities divided by
    ``temperature`` are the logits of a cross-entropy over objects in both directions (text→mask
    and mask→text, CLIP-style). The visual side is detached: the loss moves the language prompts
    towards the (pre-MBA) features of their objects, not the features towards the prompts.

    Objects with an empty mask are excluded. With fewer than two objects left there is no
    negative, and the loss is ``0·Σ seg_embed`` (zero, in the graph). Objects are negatives of
    each other even if two of them refer to the same thing (e.g. two expressions of one object);
    the batch sampler keeps that rare.

    Args:
        seg_embed: (O, C) language prompt embeddings.
        visual: (O, C, H, W) pre-MBA feature map of each object's frame.
        masks: (O, Hm, Wm) ground-truth masks, bool or float.
        temperature: softmax temperature.

    Returns:
        Scalar (unweighted; the model applies ``LossConfig.tmc_weight``).
    """
    height, width = visual.shape[-2:]
    visual = visual.detach().float()
    masks = masks.to(device=visual.device, dtype=torch.float32)
    mask_weights = _resize_masks(masks, (height, width))  # (O, H, W)
    mass = mask_weights.flatten(1).sum(dim=1)  # (O,)
    valid = mass > 0
    if int(valid.sum()) < 2:
        return seg_embed.float().sum() * 0.0
    pooled = torch.einsum("ohw,ochw->oc", mask_weights, visual) / mass.unsqueeze(1)  # (O, C)
    text = F.normalize(seg_embed.float()[valid], dim=-1)  # (O', C)
    image = F.normalize(pooled[valid], dim=-1)  # (O', C)
    logits = text @ image.T / temperature  # (O', O'), row: text, column: mask
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def boundary_loss(
    pred_logits: torch.Tensor, gt: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """L1 between per-sample normalised Sobel edge maps of prediction and ground truth.

    Edge maps are the Sobel gradient magnitudes of ``sigmoid(pred_logits)`` and of ``gt``, each
    divided by its own maximum (+eps) so that a soft prediction's weaker edges are compared by
    shape, not by contrast. The ground truth is resized to the prediction when they differ (area
    averaging when shrinking, bilinear when enlarging). Borders are replicate-padded so that a
    mask touching the image border has no edge there. Mean over pixels, then ``Σ w·l / Σ w``
    over pairs. Computed in float32.

    Args:
        pred_logits: (P, H, W) mask logits.
        gt: (P, Hg, Wg) ground truth, bool or float in [0, 1].
        weight: (P,) per-pair weight.

    Returns:
        Scalar (unweighted; the model applies ``LossConfig.boundary_weight``).
    """
    if pred_logits.shape[0] == 0:
        return pred_logits.float().sum() * 0.0
    prob = pred_logits.float().sigmoid()  # (P, H, W)
    target = _resize_masks(gt.to(device=prob.device, dtype=torch.float32), prob.shape[-2:])
    difference = (_normalised_sobel_edges(prob) - _normalised_sobel_edges(target)).abs()
    per_pair = difference.flatten(1).mean(dim=1)  # (P,)
    return _weighted_mean(per_pair, weight.to(device=prob.device, dtype=torch.float32))


def linear_ramp(step: int, total_steps: int, fraction: float) -> float:
    """Linear warm-up factor in [0, 1]: 0 at step 0, 1 from ``fraction·total_steps`` on.

    ``fraction`` 0 (or no steps) means no warm-up: always 1.0. The auxiliary losses use
    ``LossConfig.aux_warmup_fraction`` (0.2), the MBA residual scale ``gamma_warmup_fraction`` (0.1).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"ramp fraction {fraction} must be in [0, 1].")
    ramp_steps = fraction * total_steps
    if ramp_steps <= 0:
        return 1.0
    return float(min(max(step / ramp_steps, 0.0), 1.0))


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(P,), (P,) → scalar ``Σ w·v / Σ w``; 0 when every weight is 0."""
    return (values * weight).sum() / weight.sum().clamp_min(_MIN_WEIGHT_SUM)


def _resize_masks(masks: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """(M, Hm, Wm) float → (M, H, W): area averaging when shrinking, bilinear otherwise."""
    height, width = int(size[0]), int(size[1])
    if tuple(masks.shape[-2:]) == (height, width):
        return masks
    shrinking = masks.shape[-2] >= height and masks.shape[-1] >= width
    if shrinking:
        resized = F.interpolate(masks.unsqueeze(1), size=(height, width), mode="area")
    else:
        resized = F.interpolate(
            masks.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False
        )
    return resized.squeeze(1)  # (M, H, W)


def _normalised_sobel_edges(maps: torch.Tensor) -> torch.Tensor:
    """(P, H, W) → (P, H, W) Sobel gradient magnitude divided by its per-map maximum (+eps)."""
    sobel_x = torch.tensor(
        [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=maps.device, dtype=maps.dtype
    )
    kernels = torch.stack([sobel_x, sobel_x.T]).unsqueeze(1)  # (2, 1, 3, 3)
    padded = F.pad(maps.unsqueeze(1), (1, 1, 1, 1), mode="replicate")  # (P, 1, H+2, W+2)
    gradients = F.conv2d(padded, kernels)  # (P, 2, H, W)
    squared = gradients.pow(2).sum(dim=1)  # (P, H, W)
    # sqrt(s + eps) − sqrt(eps): exactly 0 on flat regions, finite gradient at s = 0.
    eps = torch.tensor(_SOBEL_EPS, device=maps.device, dtype=maps.dtype)
    magnitude = (torch.sqrt(squared + eps) - torch.sqrt(eps)).clamp_min(0.0)
    peak = magnitude.flatten(1).amax(dim=1).view(-1, 1, 1)  # (P, 1, 1)
    return magnitude / (peak + _EDGE_NORM_EPS)
