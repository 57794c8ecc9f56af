"""SAM-2 through the ``sam2`` package: frame encoding, language-prompted decoding and the
language-free visual pre-pass.

Nothing of SAM-2 is re-implemented: the adapter calls the package's image encoder, prompt
encoder and mask decoder and only changes what goes in. Language prompt embeddings are appended
to the sparse prompt tokens after the padding point token that SAM-2 itself uses when it has no
clicks; the dense prompt is the no-mask embedding; the decoder runs in multimask mode and the
mask with the highest predicted IoU is kept (``SAM2Base._forward_sam_heads`` does the same
selection; a parity test checks the two agree when there is no language).

The stride-16 map *plus the no-memory embedding* (SAM-2's single-image path) is the map that MBA
modifies; the two high-resolution levels go to the decoder unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NO_OBJECT_SCORE = -1024.0  # sam2.modeling.sam2_base.NO_OBJ_SCORE


@dataclass
class FrameFeatures:
    image_embed: torch.Tensor  # (F, C, h, w) stride-16 map + no-memory embedding
    high_res: list[torch.Tensor]  # [(F, C/8, 4h, 4w), (F, C/4, 2h, 2w)]
    backbone_out: dict | None = None  # the package's raw backbone output (video tracking reuses it)

    def select(self, index: torch.Tensor) -> "FrameFeatures":
        return FrameFeatures(self.image_embed[index], [h[index] for h in self.high_res])


@dataclass
class DecodeOutput:
    masks: torch.Tensor  # (N, 1, 4h, 4w) logits of the best-IoU mask
    iou: torch.Tensor  # (N,) its predicted IoU
    object_score: torch.Tensor  # (N, 1) SAM-2's object-presence logit
    multimasks: torch.Tensor  # (N, M, 4h, 4w) all candidates
    ious: torch.Tensor  # (N, M)


class SamAdapter(nn.Module):
    """Wraps a ``sam2`` model (a ``SAM2VideoPredictor``, so the same weights also track)."""

    def __init__(self, *, sam: nn.Module):
        super().__init__()
        self.sam = sam
        # Counts for the benchmark and tests: how often the pre-pass ran, and on how many frames.
        self.prepass_calls = 0
        self.prepass_frames = 0

    @property
    def embed_dim(self) -> int:
        return self.sam.sam_prompt_embed_dim

    @property
    def image_size(self) -> int:
        return self.sam.image_size

    @property
    def feature_size(self) -> int:
        return self.sam.sam_image_embedding_size

    def encode(self, images: torch.Tensor, *, keep_backbone_out: bool = False) -> FrameFeatures:
        """(F, 3, S, S) normalised frames → features (the image predictor's ``set_image`` path)."""
        backbone_out = self.sam.forward_image(images)
        _, vision_feats, _, feat_sizes = self.sam._prepare_backbone_features(backbone_out)
        if self.sam.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.sam.no_mem_embed
        n = images.shape[0]
        maps = [
            feat.permute(1, 2, 0).reshape(n, -1, *size)  # (HW, F, C) → (F, C, H, W)
            for feat, size in zip(vision_feats, feat_sizes)
        ]
        return FrameFeatures(
            image_embed=maps[-1], high_res=maps[:-1], backbone_out=backbone_out if keep_backbone_out else None
        )

    def decode(
        self,
        image_embed: torch.Tensor,
        high_res: list[torch.Tensor],
        language: torch.Tensor | None,
        *,
        suppress_no_object: bool = False,
    ) -> DecodeOutput:
        """Multimask decode with the padding point token plus ``language`` (N, T, C) as sparse prompts.

        ``suppress_no_object`` applies SAM-2's own rule (mask logits set to -1024 where the
        object-presence logit is <= 0); training leaves it off so that every mask gets gradient.
        """
        n = image_embed.shape[0]
        device = image_embed.device
        coords = torch.zeros(n, 1, 2, device=device)
        labels = -torch.ones(n, 1, dtype=torch.int32, device=device)
        sparse, dense = self.sam.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        if language is not None:
            sparse = torch.cat([sparse, language.to(sparse.dtype)], dim=1)  # (N, 2 + T, C)
        multimasks, ious, _, object_score = self.sam.sam_mask_decoder(
            image_embeddings=image_embed,
            image_pe=self.sam.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=False,
            high_res_features=high_res,
        )
        if suppress_no_object and self.sam.pred_obj_scores:
            multimasks = torch.where(object_score[:, :, None, None] > 0, multimasks, NO_OBJECT_SCORE)
        best = ious.argmax(dim=-1)
        rows = torch.arange(n, device=device)
        return DecodeOutput(
            masks=multimasks[rows, best].unsqueeze(1),
            iou=ious[rows, best],
            object_score=object_score,
            multimasks=multimasks,
            ious=ious,
        )

    def track(self, backbone_out: dict, rows: torch.Tensor, first_masks: torch.Tensor) -> list[DecodeOutput]:
        """SAM-2's own video path through the package's ``track_step``, for N clips at once.

        ``backbone_out``: the package's backbone output for a set of frames (``forward_image``, or
        ``encode(..., keep_backbone_out=True)``); ``rows`` (N, T): clip n's frames in time order,
        as indices into those frames; ``first_masks`` (N, S, S): the masks given on each clip's
        first frame, which SAM-2 encodes into memory as conditioning frames. Frames 1.. are
        tracked: memory attention over the earlier frames' memories and object pointers, then the
        mask decoder with no prompt. Returns, per tracked frame, the decoder's raw output (masks
        not yet emptied where the object-presence logit is <= 0), so that every mask gets
        gradient; gradients flow through the memories into the memory encoder, the memory
        attention and the image encoder.
        """
        model = self.sam
        n, clip_frames = rows.shape
        if clip_frames < 2:
            raise ValueError(f"a clip needs at least 2 frames, got {clip_frames}")
        _, feats, pos, sizes = model._prepare_backbone_features(backbone_out)
        memory: dict[str, dict] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        decoded: list = []
        hook = model.sam_mask_decoder.register_forward_hook(lambda _module, _args, out: decoded.append(out))
        tracked: list[DecodeOutput] = []
        try:
            for t in range(clip_frames):
                index = rows[:, t]
                decoded.clear()
                out = model.track_step(
                    frame_idx=t,
                    is_init_cond_frame=t == 0,
                    current_vision_feats=[f[:, index] for f in feats],
                    current_vision_pos_embeds=[p[:, index] for p in pos],
                    feat_sizes=sizes,
                    point_inputs=None,
                    mask_inputs=first_masks[:, None].float() if t == 0 else None,
                    output_dict=memory,
                    num_frames=clip_frames,
                    # The last frame's memory would serve no later frame: skip its encoder.
                    run_mem_encoder=t < clip_frames - 1,
                )
                memory["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = out
                if t == 0:
                    continue
                multimasks, ious, _, object_score = decoded[-1]
                best = ious.argmax(dim=-1)
                tracked.append(
                    DecodeOutput(
                        masks=multimasks[torch.arange(n, device=best.device), best].unsqueeze(1),
                        iou=ious.gather(1, best[:, None])[:, 0],
                        object_score=object_score,
                        multimasks=multimasks,
                        ious=ious,
                    )
                )
        finally:
            hook.remove()
        return tracked

    @torch.no_grad()
    def prior(self, features: FrameFeatures) -> torch.Tensor:
        """The visual pre-pass: a class-agnostic "where are objects" logit map, one per frame.

        Same decoder, no language, no points; detached; resized to the feature map. Called once
        per frame, however many objects the frame carries. Returns (F, 1, h, w).
        """
        self.prepass_calls += 1
        self.prepass_frames += features.image_embed.shape[0]
        out = self.decode(features.image_embed, features.high_res, None)
        h, w = features.image_embed.shape[-2:]
        return F.interpolate(out.masks.float(), size=(h, w), mode="bilinear", align_corners=False).detach()

    def upscale(self, low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(N, 1, 4h, 4w) logits → (N, 1, *size) logits (bilinear, as SAM-2 does)."""
        return F.interpolate(low_res.float(), size=size, mode="bilinear", align_corners=False)


def build_sam2_model(
    *, config_name: str, checkpoint: str | None, overrides: list[str], image_size: int, device: str = "cpu"
) -> nn.Module:
    """Build SAM-2 with the package's own Hydra configs (as a video predictor, so the same weights
    can track). Checkpoint loading is the package's, which is strict (missing or unexpected keys
    raise)."""
    from sam2.build_sam import build_sam2_video_predictor

    extra = [f"++model.image_size={image_size}", *overrides]
    model = build_sam2_video_predictor(
        config_name, ckpt_path=checkpoint, device=device, mode="eval", hydra_overrides_extra=extra
    )
    model.train()
    return model


def sam2_state_shapes(*, config_name: str, overrides: list[str], image_size: int) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in the state dict of the SAM-2 a config builds, without
    allocating its weights: parameters are created on the meta device as they are registered
    (Hiera's constructor needs real tensors for its drop-path schedule, so a meta-device
    context cannot be used), then the small buffers follow."""
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        model = build_sam2_model(
            config_name=config_name, checkpoint=None, overrides=overrides, image_size=image_size, device="meta"
        )
    finally:
        nn.Module.register_parameter = original
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}
