"""Referring-segmentation metrics that reproduce the public benchmark evaluation code.

Every function here is a pure function on numpy masks (``bool``, or anything whose non-zero
pixels are the foreground). Each convention names the public file it follows; the numbers are
meant to be the ones those scripts print, so a score logged by this platform can be compared
with a published one.

Image benchmarks (RefCOCO, RefCOCO+, RefCOCOg)
    ``ciou_giou`` follows LISA's ``validate`` (``train_ds.py``) and Sa2VA's
    ``projects/llava_sam2/evaluation/dataset/RES.py`` ``RESDataset.evaluate``.

Video benchmarks (MeViS, Ref-YouTube-VOS, Ref-DAVIS17, ReVOS)
    ``jaccard`` and ``boundary_f`` are the DAVIS-2017 region and boundary measures
    (davisvideochallenge/davis2017-evaluation, ``davis2017/metrics.py``: ``db_eval_iou``,
    ``db_eval_boundary`` / ``f_measure`` and ``_seg2bmap``). ``video_jf`` averages them over the
    frames of one expression and ``aggregate_expressions`` over expressions, as the MeViS and
    Sa2VA scripts do (``tools/eval/eval_mevis.py``, ``eval_davis.py``). ReVOS adds pixel accuracy
    and robustness (``get_r2vos_accuracy``, ``get_r2vos_robustness`` in the ReVOS/VISA evaluation
    code) and reports referring, reasoning and their mean (``tools/eval/eval_revos.py``);
    ``aggregate_revos`` reproduces that summary.

Known, deliberate differences from the reference scripts are listed where they arise:
``ciou_giou`` (no float32 epsilon; a missing prediction is an empty mask, see docs/evaluation.md) and the
ReVOS functions (boolean ground truth instead of a sum of per-object uint8 masks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

__all__ = [
    "REVOS_REASONING",
    "REVOS_REFERRING",
    "aggregate_expressions",
    "aggregate_revos",
    "boundary_f",
    "boundary_map",
    "boundary_radius",
    "ciou_giou",
    "disk_footprint",
    "jaccard",
    "pixel_accuracy",
    "robustness",
    "video_jf",
    "video_revos",
]

# ReVOS ``meta_expressions*.json`` ``type_id`` values (eval_revos.py: 0 referring, 1 reasoning;
# type 2 expressions are left out of every average there, and here).
REVOS_REFERRING = 0
REVOS_REASONING = 1


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _as_mask(mask: Any, name: str, ndim: int) -> np.ndarray:
    """Return ``mask`` as a bool array with ``ndim`` dimensions (non-zero = foreground)."""
    arr = np.asarray(mask)
    if arr.ndim != ndim:
        layout = "(H, W)" if ndim == 2 else "(T, H, W)"
        raise ValueError(f"{name} must be a {layout} mask, got an array of shape {arr.shape}")
    # The reference scripts cast with ``astype(bool)`` too, so 0/1, 0/255 and bool all agree.
    return arr.astype(bool, copy=False)


def _check_same_shape(**masks: np.ndarray) -> None:
    shapes = {name: m.shape for name, m in masks.items()}
    if len(set(shapes.values())) != 1:
        described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(
            f"mask shapes differ: {described}; resize the prediction to the ground truth first"
        )


# --------------------------------------------------------------------------------------------
# Region similarity J
# --------------------------------------------------------------------------------------------


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """DAVIS region similarity J of one frame: |pred ∩ gt| / |pred ∪ gt|.

    pred, gt: (H, W) masks. Returns 1.0 when the union is empty (both masks empty), as
    ``db_eval_iou`` in davis2017-evaluation ``davis2017/metrics.py`` does.
    """
    pred = _as_mask(pred, "pred", 2)
    gt = _as_mask(gt, "gt", 2)
    _check_same_shape(pred=pred, gt=gt)
    intersection = int(np.count_nonzero(pred & gt))
    union = int(np.count_nonzero(pred | gt))
    if union == 0:
        return 1.0
    return intersection / union


# --------------------------------------------------------------------------------------------
# Boundary F
# --------------------------------------------------------------------------------------------


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a mask, exactly as DAVIS ``_seg2bmap`` draws it.

    mask: (H, W). Returns an (H, W) bool map.

    A pixel is on the boundary when the 2×2 block formed by it and its right, lower and
    lower-right neighbours is not constant, so boundaries sit half a pixel towards the origin
    from the true object edge (a single foreground pixel at (y, x) gives the 2×2 block
    (y-1..y, x-1..x)). The last row compares only with the right neighbour, the last column only
    with the lower one, and the bottom-right pixel is never a boundary: the image border itself
    is not an edge, so a full-frame mask has no boundary at all.

    ``_seg2bmap`` can also rescale the map to another size, but ``db_eval_boundary`` never asks
    for one (width and height default to the mask's own), so only the same-size path exists here.
    """
    seg = _as_mask(mask, "mask", 2)
    # Neighbours shifted into place; outside the image counts as background.
    right = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    below = np.zeros_like(seg)
    below[:-1, :] = seg[1:, :]
    below_right = np.zeros_like(seg)
    below_right[:-1, :-1] = seg[1:, 1:]

    edges = (seg ^ right) | (seg ^ below) | (seg ^ below_right)
    # Same overrides, in the same order, as _seg2bmap: the zero padding of the last row and
    # column must not turn the image border into an edge.
    edges[-1, :] = seg[-1, :] ^ right[-1, :]
    edges[:, -1] = seg[:, -1] ^ below[:, -1]
    edges[-1, -1] = False
    return edges


def disk_footprint(radius: float) -> np.ndarray:
    """Disk structuring element identical to ``skimage.morphology.disk(radius)``.

    Returns a uint8 array of shape (n, n) with n = len(arange(-radius, radius + 1)): element
    (i, j) is 1 when x² + y² <= radius², with x and y running over ``np.arange(-radius,
    radius + 1)``. That is scikit-image's definition with its defaults (``strict_radius=True``,
    no decomposition; see ``skimage/morphology/footprints.py``, whose deprecation note gives the
    same formula for reproducing it). DAVIS builds its dilation kernel this way, so this keeps the
    boundary tolerance identical without depending on scikit-image. For the integer-valued radii
    DAVIS uses (``ceil`` of the tolerance) the disk is (2r+1)×(2r+1), centred.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    coords = np.arange(-radius, radius + 1)
    ys, xs = np.meshgrid(coords, coords, indexing="ij")  # (n, n) each
    return (xs**2 + ys**2 <= radius**2).astype(np.uint8)


def boundary_radius(shape: Sequence[int], bound_th: float = 0.008) -> float:
    """Boundary tolerance in pixels, the ``bound_pix`` rule of DAVIS ``f_measure``.

    ``bound_th`` itself when it is >= 1 (an absolute number of pixels), otherwise
    ``ceil(bound_th * ||(H, W)||)``: a fraction of the image diagonal. For a 480×854 frame and the
    default 0.008 this is ceil(7.84) = 8.
    """
    if bound_th >= 1:
        return bound_th
    return float(np.ceil(bound_th * np.linalg.norm(shape)))


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS boundary measure F of one frame.

    pred, gt: (H, W) masks. Follows ``db_eval_boundary`` / ``f_measure`` of davis2017-evaluation
    ``davis2017/metrics.py`` (without void pixels, which none of our benchmarks use):

    - boundaries are drawn with ``boundary_map`` (``_seg2bmap``);
    - each boundary is dilated with a ``disk_footprint`` of radius ``boundary_radius(shape,
      bound_th)`` (``cv2.dilate``, as upstream), so a boundary pixel matches when the other
      boundary passes within that Euclidean distance;
    - precision = matched prediction boundary pixels / prediction boundary pixels, recall =
      matched ground-truth boundary pixels / ground-truth boundary pixels;
    - empty boundaries: prediction empty and ground truth not -> P=1, R=0; ground truth empty and
      prediction not -> P=0, R=1; both empty -> P=R=1 (so F=1: note that a full-frame mask also has
      an empty boundary);
    - F = 2PR / (P + R), and 0 when P + R = 0.
    """
    pred = _as_mask(pred, "pred", 2)
    gt = _as_mask(gt, "gt", 2)
    _check_same_shape(pred=pred, gt=gt)

    radius = boundary_radius(pred.shape, bound_th)
    kernel = disk_footprint(radius)
    pred_edges = boundary_map(pred)
    gt_edges = boundary_map(gt)
    # cv2.dilate's default border never lets outside-the-image pixels switch anything on,
    # which is what upstream relies on too.
    pred_reach = cv2.dilate(pred_edges.astype(np.uint8), kernel).astype(bool)
    gt_reach = cv2.dilate(gt_edges.astype(np.uint8), kernel).astype(bool)

    n_pred = int(np.count_nonzero(pred_edges))
    n_gt = int(np.count_nonzero(gt_edges))
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.count_nonzero(pred_edges & gt_reach) / float(n_pred)
        recall = np.count_nonzero(gt_edges & pred_reach) / float(n_gt)

    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


# --------------------------------------------------------------------------------------------
# RefCOCO family: cIoU / gIoU
# --------------------------------------------------------------------------------------------


def ciou_giou(pairs: Iterable[tuple[np.ndarray | None, np.ndarray]]) -> tuple[float, float]:
    """Cumulative and mean IoU over referring sentences.

    pairs: iterable of (pred, gt), one per sentence; pred and gt are (H, W) masks and pred may be
    None for a sentence the model gave no mask for.

    - cIoU = Σ|pred ∩ gt| / Σ|pred ∪ gt| over all sentences (0.0 when every union is empty, as
      LISA's Σ∩ / (Σ∪ + 1e-10) gives).
    - gIoU = mean over sentences of |pred ∩ gt| / |pred ∪ gt|, that IoU being 1 when both masks
      are empty (LISA's ``acc_iou[union_i == 0] += 1.0``, "no-object target").
    - A missing prediction counts as an empty mask (docs/evaluation.md). Sa2VA's ``RESDataset.evaluate``
      instead skips it, adding nothing to Σ∩ and Σ∪ and 0 to the gIoU sum; with an empty mask the
      ground truth still enters Σ∪, so a model cannot raise cIoU by answering nothing.

    LISA and Sa2VA divide each sentence's intersection by (union + 1e-5) in float32 on the GPU;
    here the division is exact in float64. The difference is below 1e-5 / union per sentence,
    invisible at the precision the benchmarks report.

    Returns (ciou, giou). Raises ValueError for no pairs.
    """
    total_intersection = 0
    total_union = 0
    iou_sum = 0.0
    n_sentences = 0
    for index, (pred, gt) in enumerate(pairs):
        gt = _as_mask(gt, f"gt[{index}]", 2)
        pred = np.zeros_like(gt) if pred is None else _as_mask(pred, f"pred[{index}]", 2)
        _check_same_shape(pred=pred, gt=gt)
        intersection = int(np.count_nonzero(pred & gt))
        union = int(np.count_nonzero(pred | gt))
        total_intersection += intersection
        total_union += union
        iou_sum += 1.0 if union == 0 else intersection / union
        n_sentences += 1
    if n_sentences == 0:
        raise ValueError("ciou_giou needs at least one (pred, gt) pair")
    ciou = total_intersection / total_union if total_union > 0 else 0.0
    return ciou, iou_sum / n_sentences


# --------------------------------------------------------------------------------------------
# Video benchmarks: one expression
# --------------------------------------------------------------------------------------------


def video_jf(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> dict[str, float]:
    """J, F and J&F of one expression over all of its frames.

    pred, gt: (T, H, W) masks. J and F are the means over the T frames of ``jaccard`` and
    ``boundary_f`` (every frame counts, including the first and last: the referring-VOS scripts
    call ``db_eval_iou(...).mean()`` and ``db_eval_boundary(...).mean()`` on the whole clip), and
    J&F = (J + F) / 2. Returns {"J": ..., "F": ..., "J&F": ...} as fractions in [0, 1].
    """
    pred = _as_mask(pred, "pred", 3)
    gt = _as_mask(gt, "gt", 3)
    _check_same_shape(pred=pred, gt=gt)
    if gt.shape[0] == 0:
        raise ValueError("video_jf needs at least one frame")
    j = float(np.mean([jaccard(p, g) for p, g in zip(pred, gt, strict=True)]))
    f = float(np.mean([boundary_f(p, g, bound_th) for p, g in zip(pred, gt, strict=True)]))
    return {"J": j, "F": f, "J&F": (j + f) / 2}


def pixel_accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
    """ReVOS A of one frame: the fraction of pixels where prediction and ground truth agree.

    pred, gt: (H, W) masks. ``get_r2vos_accuracy``: ``np.mean(gt_mask == pred_mask)``.

    The reference builds its ground truth by summing the per-object uint8 masks of an expression,
    so a pixel covered by two annotated objects holds 2 and never equals a 0/1 prediction; here
    the ground truth is boolean (the union of the objects), which differs only on such overlaps.
    """
    pred = _as_mask(pred, "pred", 2)
    gt = _as_mask(gt, "gt", 2)
    _check_same_shape(pred=pred, gt=gt)
    return float(np.mean(pred == gt))


def robustness(pred: np.ndarray, gt: np.ndarray, fg: np.ndarray) -> float:
    """ReVOS R of one frame: how little the prediction spills onto pixels the sentence excludes.

    pred, gt, fg: (H, W) masks; fg is the video's foreground, the union of all its annotated
    objects (``mask_dict_foreground.json``). ``get_r2vos_robustness`` computes

        R = max(1 - |pred ∧ ¬gt| / (|fg| + 1e-6), 0)

    i.e. the false-positive area measured against the foreground area, clipped at 0. The 1e-6 is
    kept so the value is bit-for-bit the reference's: with an empty foreground R is 1 when the
    prediction has no false positives and 0 otherwise. The same note on overlapping objects as in
    ``pixel_accuracy`` applies (the reference's uint8 ``1 - gt`` wraps where gt sums to 2).
    """
    pred = _as_mask(pred, "pred", 2)
    gt = _as_mask(gt, "gt", 2)
    fg = _as_mask(fg, "fg", 2)
    _check_same_shape(pred=pred, gt=gt, fg=fg)
    false_positive = int(np.count_nonzero(pred & ~gt))
    foreground = int(np.count_nonzero(fg))
    return max(1.0 - false_positive / (foreground + 1e-6), 0.0)


def video_revos(
    pred: np.ndarray, gt: np.ndarray, fg: np.ndarray, bound_th: float = 0.008
) -> dict[str, float]:
    """J, F, J&F, A and R of one ReVOS expression: frame means, as ``eval_revos.py`` computes them.

    pred, gt, fg: (T, H, W) masks (fg: the video's foreground mask per frame). Returns fractions.
    """
    pred = _as_mask(pred, "pred", 3)
    gt = _as_mask(gt, "gt", 3)
    fg = _as_mask(fg, "fg", 3)
    _check_same_shape(pred=pred, gt=gt, fg=fg)
    scores = video_jf(pred, gt, bound_th)
    scores["A"] = float(np.mean([pixel_accuracy(p, g) for p, g in zip(pred, gt, strict=True)]))
    per_frame_r = [robustness(p, g, m) for p, g, m in zip(pred, gt, fg, strict=True)]
    scores["R"] = float(np.mean(per_frame_r))
    return scores


# --------------------------------------------------------------------------------------------
# Dataset aggregation
# --------------------------------------------------------------------------------------------

_OPTIONAL_KEYS = ("A", "R")


def aggregate_expressions(per_expression: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Dataset score: the mean over expressions of each expression's frame-mean scores.

    per_expression: one dict per expression with at least "J" and "F" (as ``video_jf`` or
    ``video_revos`` return). Returns the means of "J" and "F" (and of "A" and "R" when every
    expression has them) with J&F = (mean J + mean F) / 2, as fractions. This is what
    ``eval_mevis.py`` and Sa2VA's ``eval_davis.py`` compute; they print round(100 * x, 2).
    """
    if not per_expression:
        raise ValueError("aggregate_expressions needs at least one expression's scores")
    for index, scores in enumerate(per_expression):
        missing = [key for key in ("J", "F") if key not in scores]
        if missing:
            raise ValueError(
                f"expression {index} has no {missing} score; pass what video_jf returns"
            )
    keys = ["J", "F"] + [k for k in _OPTIONAL_KEYS if all(k in s for s in per_expression)]
    result = {key: float(np.mean([s[key] for s in per_expression])) for key in keys}
    result["J&F"] = (result["J"] + result["F"]) / 2
    return result


def aggregate_revos(
    per_expression: Sequence[Mapping[str, float]], type_ids: Sequence[int]
) -> dict[str, dict[str, float]]:
    """ReVOS summary exactly as ``tools/eval/eval_revos.py`` writes it, in percent.

    per_expression: one dict per expression with "J", "F", "A", "R" as fractions (what
    ``video_revos`` returns); type_ids: each expression's ``type_id`` from the meta file.

    Like the reference: each expression's scores are first turned into percentages rounded to two
    decimals (numpy rounding, the reference rounds numpy floats), then averaged within the
    referring (type 0) and reasoning (type 1) groups; a group's J&F is (J + F) / 2 of its means;
    "overall" is the mean of the two groups, key by key. Expressions of any other type are left
    out, as there. Returns {"referring": {...}, "reasoning": {...}, "overall": {...}}, each with
    "J", "F", "A", "R", "J&F" (the reference calls the groups "referring", "reason", "overall"
    and the last key "JF").
    """
    if len(per_expression) != len(type_ids):
        raise ValueError(
            f"got {len(per_expression)} expression scores but {len(type_ids)} type ids"
        )
    metric_keys = ("J", "F", "A", "R")
    groups: dict[str, dict[str, float]] = {}
    for group, type_id in (("referring", REVOS_REFERRING), ("reasoning", REVOS_REASONING)):
        members = [s for s, t in zip(per_expression, type_ids, strict=True) if t == type_id]
        if not members:
            raise ValueError(
                f"no ReVOS expressions of type {type_id} ({group}); "
                "the overall score needs both groups"
            )
        summary = {}
        for key in metric_keys:
            rounded = [np.round(100.0 * np.float64(s[key]), 2) for s in members]
            summary[key] = float(np.mean(rounded))
        summary["J&F"] = (summary["J"] + summary["F"]) / 2
        groups[group] = summary
    groups["overall"] = {
        key: (groups["referring"][key] + groups["reasoning"][key]) / 2
        for key in (*metric_keys, "J&F")
    }
    return groups
