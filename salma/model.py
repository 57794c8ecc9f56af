"""The whole SALMA model: MLLM → ``[SEG]`` prompts → SAM-2 with Mask-Biased Attention → losses.

The Sa2VA baseline is this same class with ``mba=None`` (``mba.enabled: false`` in config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from salma import losses
from salma.batch import SalmaBatch
from salma.config import LossConfig
from salma.mask_biased_attention import MaskBiasedAttention
from salma.mllm import SalmaMLLM
from salma.sam_adapter import FrameFeatures, SamAdapter


PriorSource = Literal["learned", "oracle", "shuffled", "uniform"]
# The oracle prior's logit magnitude: sigmoid(4) = 0.98, a near-open gate on objects and a
# near-closed one (0.02) on the background, at tau = 1.
ORACLE_LOGIT = 4.0


@dataclass
class SegmentationOutput:
    """What one language-conditioned decode produced for a set of (object, frame) pairs."""

    mask_logits: torch.Tensor  # (P, 1, 4h, 4w) the candidate with the highest predicted IoU
    iou: torch.Tensor  # (P,)
    multimasks: torch.Tensor  # (P, M, 4h, 4w) every candidate
    ious: torch.Tensor  # (P, M) their predicted IoUs
    object_score: torch.Tensor  # (P, 1)
    features_before: torch.Tensor  # (P, C, h, w) stride-16 map before MBA
    prior: torch.Tensor | None  # (P, 1, h, w) pre-pass logits, None without MBA
    mba_energy: torch.Tensor | None  # (P, h, w) energy of the MBA update
    language_change: torch.Tensor  # (P, h, w) squared norm of the language-induced feature change


def shuffled_frames(frame_sample_index: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(F,) index: for frame f of sample b, the frame at the same position (mod the count) of the
    next sample in the batch (mod the number of samples). Needs two or more samples."""
    samples = int(frame_sample_index.max()) + 1
    frames_of = [torch.nonzero(frame_sample_index == b).flatten() for b in range(samples)]
    out = torch.empty(num_frames, dtype=torch.long, device=frame_sample_index.device)
    for b, own in enumerate(frames_of):
        other = frames_of[(b + 1) % samples]
        for i, f in enumerate(own.tolist()):
            out[f] = other[i % len(other)]
    return out


class SalmaModel(nn.Module):
    """Parameters and the forward only. What it needs of the tokenizer (the ``[SEG]`` id) and of
    the config (the loss weights, the MBA language tokens) comes in as plain arguments; the
    tokenizer and the resolved config themselves belong to whoever built the model
    (``salma.builder.BuiltSalma``)."""

    def __init__(
        self,
        *,
        mllm: SalmaMLLM,
        sam: SamAdapter,
        mba: MaskBiasedAttention | None,
        seg_token_id: int,
        use_expression_tokens: bool,
        max_expression_tokens: int,
        prior_source: PriorSource = "learned",
        loss: LossConfig,
        freeze_sam_encoder: bool,
    ):
        super().__init__()
        self.mllm = mllm
        self.sam = sam
        self.mba = mba
        hidden, prompt_dim = mllm.hidden_size, sam.embed_dim
        # [SEG] hidden state → SAM prompt space (Sa2VA's text_hidden_fcs: D→D, ReLU, D→prompt).
        self.seg_projector = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, prompt_dim))
        # Expression tokens → SAM prompt space, for the MBA language tokens.
        self.expression_projector = (
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, prompt_dim))
            if use_expression_tokens and mba is not None
            else None
        )
        self.seg_token_id = seg_token_id
        self.max_expression_tokens = max_expression_tokens
        if prior_source not in ("learned", "oracle", "shuffled", "uniform"):
            raise ValueError(f"prior_source={prior_source!r} must be learned, oracle, shuffled or uniform")
        self.prior_source = prior_source
        self.loss = loss
        self.freeze_sam_encoder = freeze_sam_encoder
        self.aux_scale = 1.0

    # ----------------------------------------------------------------- schedules
    def set_schedule(self, step: int, total_steps: int) -> dict[str, float]:
        """Set the MBA gamma warm-up and the auxiliary-loss ramp for this global step."""
        w = self.loss
        gamma_scale = losses.linear_ramp(step, total_steps, w.gamma_warmup_fraction)
        self.aux_scale = losses.linear_ramp(step, total_steps, w.aux_warmup_fraction)
        if self.mba is not None:
            self.mba.set_warmup_scale(gamma_scale)
        return {"gamma_scale": gamma_scale, "aux_scale": self.aux_scale}

    # ----------------------------------------------------------------- pieces
    def seg_hidden_states(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L, D) → (O, D): the hidden state *at* each [SEG] position, row by row."""
        return hidden[input_ids == self.seg_token_id]

    def language_tokens(
        self, seg_prompts: torch.Tensor, hidden: torch.Tensor, seg_sample_index: torch.Tensor, expr_positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MBA keys/values per object: the [SEG] prompt, then the projected expression tokens.

        Returns tokens (O, 1 + E, C) and their validity mask (O, 1 + E).
        """
        seg = seg_prompts[:, None]  # (O, 1, C)
        seg_mask = torch.ones(seg.shape[:2], dtype=torch.bool, device=seg.device)
        if self.expression_projector is None or expr_positions.shape[1] == 0:
            return seg, seg_mask
        positions = expr_positions[:, : self.max_expression_tokens]  # (O, E)
        valid = positions >= 0
        rows = hidden[seg_sample_index]  # (O, L, D)
        gathered = torch.gather(rows, 1, positions.clamp(min=0)[..., None].expand(-1, -1, rows.shape[-1]))
        expr = self.expression_projector(gathered)  # (O, E, C)
        return torch.cat([seg, expr], dim=1), torch.cat([seg_mask, valid], dim=1)

    def encode_frames(self, sam_pixel_values: torch.Tensor, *, keep_backbone_out: bool = False) -> FrameFeatures:
        if self.freeze_sam_encoder:
            with torch.no_grad():
                return self.sam.encode(sam_pixel_values, keep_backbone_out=keep_backbone_out)
        return self.sam.encode(sam_pixel_values, keep_backbone_out=keep_backbone_out)

    def frame_priors(
        self,
        features: FrameFeatures,
        *,
        frame_sample_index: torch.Tensor | None = None,
        object_masks: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """(F, 1, h, w) prior logits, one per frame (not per object); None when MBA is off.

        ``prior_source`` (``mba.prior``) picks them:

        - ``learned``: SAM-2's language-free pre-pass (the method);
        - ``uniform``: a constant 0, i.e. the same gate everywhere ("+CMA", cross-modal attention
          without a mask prior);
        - ``oracle``: the union of every annotated object on the frame (``object_masks``, (F, S, S)
          bool, from ``SalmaBatch.frame_object_masks``) as ``±ORACLE_LOGIT`` logits, by each
          cell's covered fraction (area-averaged to the map): the best a class-agnostic structure
          prior can do. Needs data that annotates every object (the synthetic clutter splits);
          without it this raises;
        - ``shuffled``: the learned pre-pass of *another* sample's frame (a control with the same
          statistics in the wrong place): frame f of sample b takes the prior of sample b+1 (mod
          the batch; ``frame_sample_index`` (F,) says which sample each frame belongs to), at the
          same position within that sample's frames (mod its frame count). A batch of one sample
          has no other sample: the prior is then rotated by 180 degrees instead.
        """
        if self.mba is None:
            return None
        embed = features.image_embed  # (F, C, h, w)
        match self.prior_source:
            case "uniform":
                return embed.new_zeros(embed.shape[0], 1, *embed.shape[-2:])
            case "learned":
                return self.sam.prior(features)
            case "oracle":
                if object_masks is None:
                    raise ValueError(
                        "mba.prior=oracle needs every object's mask on each frame (SalmaBatch.frame_object_masks), "
                        "which only data with a clutter.json sidecar provides (the synthetic clutter-lure splits: "
                        "data.synthetic.clutter); use mba.prior=learned for other data and for inference"
                    )
                covered = F.adaptive_avg_pool2d(object_masks[:, None].float(), embed.shape[-2:])  # (F, 1, h, w)
                return (ORACLE_LOGIT * (2.0 * covered - 1.0)).to(embed.dtype)
            case "shuffled":
                learned = self.sam.prior(features)
                return learned[shuffled_frames(frame_sample_index, learned.shape[0])] if (
                    frame_sample_index is not None and int(frame_sample_index.max()) > 0
                ) else torch.rot90(learned, 2, dims=(-2, -1))
        raise AssertionError(self.prior_source)

    def segment(
        self,
        features: FrameFeatures,
        priors: torch.Tensor | None,
        language: torch.Tensor,
        language_mask: torch.Tensor,
        pair_object_index: torch.Tensor,
        pair_frame_index: torch.Tensor,
        *,
        suppress_no_object: bool = False,
    ) -> SegmentationOutput:
        """Language-conditioned decode of every (object, frame) pair, MBA first when enabled."""
        visual = features.image_embed[pair_frame_index]  # (P, C, h, w)
        high_res = [h[pair_frame_index] for h in features.high_res]
        pair_language = language[pair_object_index]  # (P, T, C)
        pair_mask = language_mask[pair_object_index]
        prior = None
        energy = None
        modified = visual
        if self.mba is not None:
            prior = priors[pair_frame_index]
            modified, info = self.mba(visual, pair_language, pair_mask, prior)
            energy = info["energy"]
        prompt = pair_language[:, :1]  # the [SEG] prompt embedding is the sparse prompt
        out = self.sam.decode(modified, high_res, prompt, suppress_no_object=suppress_no_object)
        change = (modified - visual).detach().pow(2).sum(dim=1)  # (P, h, w)
        return SegmentationOutput(
            mask_logits=out.masks,
            iou=out.iou,
            multimasks=out.multimasks,
            ious=out.ious,
            object_score=out.object_score,
            features_before=visual,
            prior=prior,
            mba_energy=energy,
            language_change=change,
        )

    def segment_batch(
        self, batch: SalmaBatch, hidden: torch.Tensor, seg_hidden: torch.Tensor, *, keep_backbone_out: bool = False
    ) -> tuple[torch.Tensor, SegmentationOutput, FrameFeatures]:
        """The [SEG] prompts (O, C) of a batch, the language-conditioned decode of its
        (object, frame) pairs, and the frames' features, from the MLLM's last hidden states
        ``hidden`` (B, L, D) and the states at the [SEG] positions ``seg_hidden`` (O, D)."""
        seg_prompts = self.seg_projector(seg_hidden)  # (O, C)
        language, language_mask = self.language_tokens(
            seg_prompts, hidden, batch.seg_sample_index, batch.expr_positions
        )
        features = self.encode_frames(batch.sam_pixel_values, keep_backbone_out=keep_backbone_out)
        priors = self.frame_priors(
            features, frame_sample_index=batch.frame_sample_index, object_masks=batch.frame_object_masks
        )
        seg = self.segment(
            features, priors, language, language_mask, batch.pair_object_index, batch.pair_frame_index
        )
        return seg_prompts, seg, features

    # ----------------------------------------------------------------- training forward
    def forward(self, batch: SalmaBatch) -> dict[str, torch.Tensor]:
        w = self.loss
        mllm_out = self.mllm(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values
        )
        terms: dict[str, torch.Tensor] = {"lm": losses.lm_loss(mllm_out.logits, batch.labels)}
        zero = mllm_out.logits.sum() * 0.0
        seg_hidden = self.seg_hidden_states(mllm_out.hidden_states, batch.input_ids)
        if seg_hidden.shape[0] != batch.num_objects:
            raise ValueError(
                f"batch has {batch.num_objects} objects but {seg_hidden.shape[0]} [SEG] tokens in input_ids"
            )
        if batch.pair_object_index.numel():
            seg_prompts, seg, features = self.segment_batch(
                batch, mllm_out.hidden_states, seg_hidden, keep_backbone_out=w.track_weight > 0
            )
            size = batch.gt_masks.shape[-2:]
            gt = batch.gt_masks.float()
            mask_logits, mask_terms = self._mask_terms(seg, gt, batch.mask_weight, size)
            terms.update(mask_terms)
            terms["object"] = w.object_weight * losses.object_presence_loss(seg.object_score, gt, batch.mask_weight)
            terms["boundary"] = w.boundary_weight * losses.boundary_loss(mask_logits, gt, batch.mask_weight)
            terms["tmc"] = w.tmc_weight * self._tmc(seg_prompts, seg, gt, batch)
            terms["track"] = w.track_weight * self._track(features, gt, batch) if w.track_weight > 0 else zero
        else:
            for name in ("mask_bce", "mask_dice", "iou", "object", "boundary", "tmc", "track"):
                terms[name] = zero
        total = (
            w.lm_weight * terms["lm"]
            + terms["mask_bce"]
            + terms["mask_dice"]
            + terms["iou"]
            + terms["object"]
            + terms["track"]
            + self.aux_scale * (terms["tmc"] + terms["boundary"])
        )
        # Every trainable parameter takes part in the graph, with zero weight where the batch did
        # not use it (text-only samples, MBA with gamma still 0): distributed data parallel and
        # DeepSpeed ZeRO then never wait for a gradient that is not coming.
        total = total + 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)
        terms["total"] = total
        return terms

    def _mask_terms(
        self, seg: SegmentationOutput, gt: torch.Tensor, weight: torch.Tensor, size: torch.Size
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """BCE/Dice (and the IoU-head loss) of the supervised candidate of each pair; returns that
        candidate's low-resolution logits (P, 4h, 4w) and the terms.

        ``predicted_iou`` (Sa2VA): the candidate the IoU head ranks first, as at inference; the
        IoU head itself is not trained (``iou`` is 0). ``min_loss`` (SAM-2's own multimask
        training): the candidate with the lowest mask loss, plus an L1 loss that teaches the IoU
        head to rank the candidates, so that inference's highest-predicted-IoU choice picks the
        right one.
        """
        w = self.loss
        point_args = dict(
            num_points=w.num_points,
            oversample_ratio=w.oversample_ratio,
            importance_sample_ratio=w.importance_sample_ratio,
            bce_weight=w.bce_weight,
            dice_weight=w.dice_weight,
            dice_eps=w.dice_eps,
        )
        if w.mask_selection == "min_loss":
            p, m = seg.multimasks.shape[:2]
            candidates = self.sam.upscale(seg.multimasks.flatten(0, 1)[:, None], size).view(p, m, *size)
            terms, chosen = losses.min_loss_multimask_loss(candidates, gt, weight, **point_args)
            terms["iou"] = w.iou_weight * losses.iou_prediction_loss(seg.ious, seg.multimasks, gt, weight)
            rows = torch.arange(p, device=chosen.device)
            return seg.multimasks[rows, chosen], terms
        pred = self.sam.upscale(seg.mask_logits, size)[:, 0]  # (P, S, S)
        terms = losses.mask_bce_dice_loss(pred, gt, weight, **point_args)
        terms["iou"] = seg.ious.sum() * 0.0
        return seg.mask_logits[:, 0], terms

    def _tmc(self, seg_prompts: torch.Tensor, seg: SegmentationOutput, gt: torch.Tensor, batch: SalmaBatch) -> torch.Tensor:
        """Text–mask contrast on one supervised, non-empty frame per object (its first)."""
        valid = (batch.mask_weight > 0) & gt.flatten(1).any(dim=1)  # (P,)
        pair_ids = torch.nonzero(valid).flatten()
        objects = batch.pair_object_index[pair_ids]
        first = {}
        for p, o in zip(pair_ids.tolist(), objects.tolist()):
            first.setdefault(o, p)
        if len(first) < 2:
            return seg_prompts.sum() * 0.0
        obj_idx = torch.tensor(list(first.keys()), device=gt.device)
        pair_idx = torch.tensor(list(first.values()), device=gt.device)
        return losses.text_mask_contrastive_loss(
            seg_prompts[obj_idx],
            seg.features_before[pair_idx],
            gt[pair_idx],
            temperature=self.loss.tmc_temperature,
        )

    def _track(self, features: FrameFeatures, gt: torch.Tensor, batch: SalmaBatch) -> torch.Tensor:
        """SAM-2's video loss (``loss.track_weight``) on the objects of the batch's videos.

        Each object with at least two supervised frames whose first one shows it is a clip: that
        frame's ground-truth mask seeds SAM-2's memory (as SALMA's key-frame masks seed the
        tracker at inference) and the later frames are tracked (``SamAdapter.track``), on the
        same features as the language-conditioned decode. Per tracked (object, frame): BCE + Dice
        (``loss.bce_weight``, ``loss.dice_weight``), dense, averaged over every candidate, where
        the object is visible, plus the object-presence BCE; the mean over all of them. Objects
        whose first sampled frame does not show them are left out (nothing to seed with).
        """
        w = self.loss
        frames: dict[int, list[tuple[int, int]]] = {}
        indices = zip(batch.pair_object_index.tolist(), batch.pair_frame_index.tolist(), batch.mask_weight.tolist())
        for p, (o, f, weight) in enumerate(indices):
            if weight > 0:
                frames.setdefault(o, []).append((f, p))
        clips: dict[int, list[list[int]]] = {}  # clip length → each clip's pair indices in time order
        for pairs in frames.values():
            pairs.sort()
            if len(pairs) >= 2 and bool(gt[pairs[0][1]].any()):
                clips.setdefault(len(pairs), []).append([p for _, p in pairs])
        total, count = gt.sum() * 0.0, 0
        size = gt.shape[-2:]
        for pair_ids in clips.values():
            ids = torch.tensor(pair_ids, device=gt.device)  # (N, T)
            tracked = self.sam.track(features.backbone_out, batch.pair_frame_index[ids], gt[ids[:, 0]])
            for t, out in enumerate(tracked, start=1):
                target = gt[ids[:, t]]  # (N, S, S)
                present = target.flatten(1).any(dim=1)
                presence = F.binary_cross_entropy_with_logits(
                    out.object_score[:, 0].float(), present.float(), reduction="sum"
                )
                total = total + presence
                count += len(ids)
                if present.any():
                    n, m = int(present.sum()), out.multimasks.shape[1]
                    candidates = self.sam.upscale(out.multimasks[present].flatten(0, 1)[:, None], size)
                    bce, dice = losses.candidate_bce_dice(candidates.view(n, m, *size), target[present], dice_eps=w.dice_eps)
                    total = total + (w.bce_weight * bce + w.dice_weight * dice).mean(dim=1).sum()
        return total / max(count, 1)
