"""Attention-drift measures that every arm has, the Sa2VA baseline (no MBA) included.

On data whose background clutter is annotated (the synthetic clutter-lure splits: the batch's
``frame_clutter_masks``, ``frame_object_masks`` and ``object_lure``), ``probe_batch`` runs the
model on a batch the way training does (teacher-forced: the answer with its ``[SEG]`` token is in
the input, as for the loss; no generation) and measures, per referred object over its frames:

- **grounding**: intersection and union of the predicted mask (the decoder's best-IoU candidate,
  thresholded at logit 0, at the SAM-2 input size) with the ground truth (cIoU over a split);
- **expression-ignoring floor**: the same for the union of every annotated object taken as the
  prediction (what a model that segments "the objects" without reading the sentence scores);
- **lure share**: the predicted pixels on the clutter region over all predicted pixels;
- **clutter false positives**: the predicted pixels on the clutter over the clutter's area;
- **[SEG] attention on clutter**: inside SAM-2's mask decoder, the final token-to-image attention
  of the ``[SEG]`` prompt token (recomputed from that layer's own projections, averaged over
  heads), its mass on the clutter cells divided by the clutter's share of the cells
  (``region_ratio``: 1 = no preference, > 1 = drawn to the clutter). This is an attention map;
  the baseline has it too, since the ``[SEG]`` prompt enters the decoder in every arm;
- **language-specific MBA update on clutter**: ``‖MBA(x, true tokens) − MBA(x, swapped tokens)‖²``
  per cell, the swapped tokens those of an object of another sample in the batch (so whatever
  does not depend on the sentence cancels), as a ``region_ratio`` on the clutter. NaN for the
  baseline (it has no MBA update: the sentence changes no feature before the decoder) and for a
  batch of one sample (nothing to swap with).

Teacher forcing is a simplification against the benchmark path (``salma evaluate`` generates the
answer first): it measures the segmentation given the right ``[SEG]``, not whether the model
answers with one. No ray / mlflow here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from salma.batch import SalmaBatch
from salma.model import SalmaModel, shuffled_frames

MEASURES = ("ciou", "floor_ciou", "lure_share", "clutter_fp", "seg_attention_clutter", "language_update_clutter")


def region_ratio(weights: torch.Tensor, coverage: torch.Tensor) -> float:
    """(share of ``weights`` on the region) / (the region's share of the cells).

    weights: (h, w) non-negative; coverage: (h, w) in [0, 1], the fraction of each cell inside the
    region. NaN when the region is empty or the weights are all zero.
    """
    total, area = float(weights.sum()), float(coverage.sum())
    if total <= 0 or area <= 0:
        return math.nan
    return (float((weights * coverage).sum()) / total) / (area / coverage.numel())


@contextlib.contextmanager
def token_to_image_attention(attention: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Capture the attention probabilities of a ``sam2`` ``Attention`` layer called as
    ``layer(q=..., k=..., v=...)``: yields a list that receives one (N, heads, Nq, Nk) tensor per
    call, recomputed from the layer's own q/k projections (the layer itself calls
    ``scaled_dot_product_attention``, which does not return them)."""
    captured: list[torch.Tensor] = []

    def hook(module, args, kwargs, output):
        q = module._separate_heads(module.q_proj(kwargs["q"]), module.num_heads)  # (N, heads, Nq, d)
        k = module._separate_heads(module.k_proj(kwargs["k"]), module.num_heads)  # (N, heads, Nk, d)
        captured.append((q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1).detach())

    handle = attention.register_forward_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def probe_batch(model: SalmaModel, batch: SalmaBatch) -> list[dict[str, float]]:
    """Per referred object of ``batch``: the sums and ratios the module docstring lists.

    Each dict holds ``lure`` (1 lure, 0 control), ``intersection``, ``union``,
    ``floor_intersection``, ``floor_union``, ``pred_area``, ``pred_on_clutter``, ``clutter_area``
    (pixels at the SAM input size, summed over the object's frames), ``seg_attention_clutter`` and
    ``language_update_clutter`` (means over its frames; NaN where undefined).
    """
    if batch.frame_clutter_masks is None or batch.frame_object_masks is None or batch.object_lure is None:
        raise ValueError(
            "probe_batch needs a batch from data with a clutter.json sidecar (frame_clutter_masks, "
            "frame_object_masks, object_lure): the synthetic clutter-lure splits"
        )
    mllm_out = model.mllm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values)
    seg_hidden = model.seg_hidden_states(mllm_out.hidden_states, batch.input_ids)
    seg_prompts = model.seg_projector(seg_hidden)  # (O, C)
    language, language_mask = model.language_tokens(seg_prompts, mllm_out.hidden_states, batch.seg_sample_index, batch.expr_positions)
    features = model.encode_frames(batch.sam_pixel_values)
    priors = model.frame_priors(features, frame_sample_index=batch.frame_sample_index, object_masks=batch.frame_object_masks)
    obj, frame = batch.pair_object_index, batch.pair_frame_index
    decoder_attention = model.sam.sam.sam_mask_decoder.transformer.final_attn_token_to_image
    with token_to_image_attention(decoder_attention) as captured:
        seg = model.segment(features, priors, language, language_mask, obj, frame)
    h, w = features.image_embed.shape[-2:]
    seg_attention = captured[-1].mean(dim=1)[:, -1].view(-1, h, w)  # (P, h, w): the [SEG] token is the last
    size = batch.gt_masks.shape[-2:]
    pred = model.sam.upscale(seg.mask_logits, size)[:, 0] > 0  # (P, S, S)
    gt, clutter, objects = batch.gt_masks, batch.frame_clutter_masks[frame], batch.frame_object_masks[frame]
    coverage = F.adaptive_avg_pool2d(clutter[:, None].float(), (h, w))[:, 0]  # (P, h, w)
    update = _language_update(model, features.image_embed, priors, language, language_mask, batch)

    per_object: dict[int, dict[str, Any]] = {}
    for p in range(len(obj)):
        o = int(obj[p])
        row = per_object.setdefault(o, {
            "lure": float(batch.object_lure[o]), "intersection": 0.0, "union": 0.0, "floor_intersection": 0.0,
            "floor_union": 0.0, "pred_area": 0.0, "pred_on_clutter": 0.0, "clutter_area": 0.0,
            "_attention": [], "_update": [],
        })
        row["intersection"] += float((pred[p] & gt[p]).sum())
        row["union"] += float((pred[p] | gt[p]).sum())
        row["floor_intersection"] += float((objects[p] & gt[p]).sum())
        row["floor_union"] += float((objects[p] | gt[p]).sum())
        row["pred_area"] += float(pred[p].sum())
        row["pred_on_clutter"] += float((pred[p] & clutter[p]).sum())
        row["clutter_area"] += float(clutter[p].sum())
        row["_attention"].append(region_ratio(seg_attention[p], coverage[p]))
        row["_update"].append(region_ratio(update[p], coverage[p]) if update is not None else math.nan)
    out = []
    for o in sorted(per_object):
        row = per_object[o]
        row["seg_attention_clutter"] = _nanmean(row.pop("_attention"))
        row["language_update_clutter"] = _nanmean(row.pop("_update"))
        out.append(row)
    return out


def _language_update(model, image_embed, priors, language, language_mask, batch) -> torch.Tensor | None:
    """(P, h, w) ‖MBA(x, true) − MBA(x, swapped)‖² per cell, or None without MBA or a second sample."""
    if model.mba is None or int(batch.seg_sample_index.max()) < 1:
        return None
    swap = shuffled_frames(batch.seg_sample_index, language.shape[0])  # another sample's object
    obj, frame = batch.pair_object_index, batch.pair_frame_index
    visual, prior = image_embed[frame], priors[frame]
    true, _ = model.mba(visual, language[obj], language_mask[obj], prior)
    swapped, _ = model.mba(visual, language[swap][obj], language_mask[swap][obj], prior)
    return (true - swapped).pow(2).sum(dim=1)


# name -> (numerator, denominator, scale) of a split-level ratio Σ num / Σ den, or (column, None,
# None) of a mean over objects (NaNs left out)
MEASURES: dict[str, tuple[str, str | None, float | None]] = {
    "ciou": ("intersection", "union", 100.0),
    "floor_ciou": ("floor_intersection", "floor_union", 100.0),
    "lure_share": ("pred_on_clutter", "pred_area", 1.0),
    "clutter_fp": ("pred_on_clutter", "clutter_area", 1.0),
    "seg_attention_clutter": ("seg_attention_clutter", None, None),
    "language_update_clutter": ("language_update_clutter", None, None),
}


def aggregate(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Split-level measures from ``probe_batch`` rows: ``ciou`` and ``floor_ciou`` (Σ I / Σ U, in
    %), ``lure_share`` (Σ predicted on clutter / Σ predicted), ``clutter_fp`` (Σ predicted on clutter
    / Σ clutter area), the two ratios' means over objects, and ``n`` (objects)."""
    columns = row_columns(rows)
    return {**{name: measure(columns, name) for name in MEASURES}, "n": float(len(rows))}


def row_columns(rows: Sequence[dict[str, float]]) -> dict[str, np.ndarray]:
    """``probe_batch`` rows as one float64 array per field: what ``measure`` reads, and what a
    bootstrap resamples cheaply (thousands of replicates over a thousand objects)."""
    fields = {field for num, den, _ in MEASURES.values() for field in (num, den) if field is not None}
    return {field: np.array([r[field] for r in rows], dtype=np.float64) for field in sorted(fields)}


def measure(columns: dict[str, np.ndarray], name: str) -> float:
    """One measure of ``MEASURES`` from ``row_columns`` (NaN when its denominator is 0 or every
    value is NaN)."""
    num, den, scale = MEASURES[name]
    if den is not None:
        d = columns[den].sum()
        return float(scale * columns[num].sum() / d) if d > 0 else math.nan
    return _nanmean(columns[num])


def _nanmean(values: Sequence[float] | np.ndarray) -> float:
    """The mean of the values that are not NaN; NaN when there are none."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan
