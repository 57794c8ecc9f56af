"""What every expression of one record shares, computed once: the record's frame features.

A record (an image with its referring sentences, a video with its expressions) is asked several
questions about the same pixels. ``RecordFeatures.encode`` runs each encoder once per record:

- InternVL's vision tower (and projector) on the MLLM tiles of the key frames: the image
  features that ``SalmaMLLM.embed`` scatters into every prompt;
- SAM-2's image encoder on the key frames (the stride-16 map with the no-memory embedding, the
  high-resolution levels, and for videos the package's raw backbone output), and the visual
  pre-pass prior of each key frame;
- for videos, the SAM-2 input of every frame, which the tracker encodes lazily, one frame at a
  time; the key frames' backbone outputs are handed to it (``tracker_features``) so that it never
  encodes them again.

The object lives for the duration of one record (``SalmaPredictor.segment_expressions``); nothing
is kept between records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from salma.data.examples import ImageGeometry, mllm_tiles, tokens_per_image
from salma.image_transforms import resize_square, to_normalized_tensor
from salma.model import SalmaModel
from salma.sam_adapter import FrameFeatures


@dataclass
class RecordFeatures:
    media: str  # "image" or "video"
    keys: list[int]  # key frames, ascending (the MLLM sees them; SAM-2 decodes them with language)
    height: int
    width: int
    image_features: torch.Tensor  # (tiles, tokens per tile, D) InternVL features of the key frames
    tokens_per_image: list[int]  # image-token counts of the prompt placeholder
    sam: FrameFeatures  # (K, ...) SAM-2 features of the key frames
    priors: torch.Tensor | None  # (K, 1, h, w) pre-pass logits; None without MBA
    sam_images: torch.Tensor | None  # (T, 3, S, S) every frame's SAM-2 input, videos only

    @classmethod
    def encode(
        cls, model: SalmaModel, frames: list[np.ndarray], keys: list[int], geometry: ImageGeometry, device: torch.device
    ) -> RecordFeatures:
        return cls.encode_many(model, [(frames, keys)], geometry, device)[0]

    @classmethod
    @torch.no_grad()
    def encode_many(
        cls,
        model: SalmaModel,
        records: list[tuple[list[np.ndarray], list[int]]],
        geometry: ImageGeometry,
        device: torch.device,
    ) -> list[RecordFeatures]:
        """Several records' ``(frames, key frames)`` → their features, each encoder run once for
        all of them: the MLLM tiles of every record in one batch through the vision tower, every
        record's SAM-2 key frames in one batch through its image encoder (every SAM-2 input has
        the same size, and so do the tiles). The pre-pass prior runs per record, since some of its
        settings look at the other frames of the batch."""
        tiles, sam_inputs, every_frame = [], [], []
        for frames, keys in records:
            media = "video" if len(frames) > 1 else "image"
            tiles.append(mllm_tiles([frames[i] for i in keys], media, geometry))
            if media == "video":
                every_frame.append(_sam_inputs(frames, geometry, device))
                sam_inputs.append(every_frame[-1][keys])
            else:
                every_frame.append(None)
                sam_inputs.append(_sam_inputs([frames[i] for i in keys], geometry, device))
        image_features = model.mllm.image_features(to_normalized_tensor([t for ts in tiles for t in ts]).to(device))
        any_video = any(images is not None for images in every_frame)
        sam = model.encode_frames(torch.cat(sam_inputs), keep_backbone_out=any_video)
        encoded, tile_start, frame_start = [], 0, 0
        for (frames, keys), record_tiles, images in zip(records, tiles, every_frame, strict=True):
            media = "video" if images is not None else "image"
            mine = _frames_of(sam, slice(frame_start, frame_start + len(keys)), keep_backbone_out=media == "video")
            height, width = frames[0].shape[:2]
            encoded.append(cls(
                media=media,
                keys=keys,
                height=height,
                width=width,
                image_features=image_features[tile_start : tile_start + len(record_tiles)],
                tokens_per_image=tokens_per_image(len(record_tiles), media, geometry),
                sam=mine,
                priors=model.frame_priors(mine),
                sam_images=images,
            ))
            tile_start += len(record_tiles)
            frame_start += len(keys)
        return encoded

    def tracker_features(self) -> dict[int, tuple[torch.Tensor, dict]]:
        """Frame index → ``(image, backbone_out)`` of each key frame, in the form SAM-2's video
        predictor keeps in ``inference_state["cached_features"]`` (batch of one frame)."""
        if self.sam_images is None or self.sam.backbone_out is None:
            raise ValueError("tracker features exist for videos only (encode keeps the backbone output there)")
        out = self.sam.backbone_out
        return {t: (self.sam_images[t].float().unsqueeze(0), _backbone_frames(out, slice(j, j + 1)))
                for j, t in enumerate(self.keys)}


def _sam_inputs(frames: list[np.ndarray], geometry: ImageGeometry, device: torch.device) -> torch.Tensor:
    """(T, 3, S, S) SAM-2 inputs of the frames."""
    return to_normalized_tensor([resize_square(f, geometry.sam_size) for f in frames]).to(device)


def _frames_of(features: FrameFeatures, frames: slice, *, keep_backbone_out: bool) -> FrameFeatures:
    """The features of a run of frames out of a batch encoded together (the whole batch when the
    run covers it, so that one record alone keeps its tensors as they came)."""
    if frames.start == 0 and frames.stop == features.image_embed.shape[0]:
        return features if keep_backbone_out else FrameFeatures(features.image_embed, features.high_res)
    out = features.backbone_out
    backbone = _backbone_frames(out, frames) if keep_backbone_out and out is not None else None
    return FrameFeatures(features.image_embed[frames], [h[frames] for h in features.high_res], backbone)


def _backbone_frames(out: dict, frames: slice) -> dict:
    """A run of frames of SAM-2's raw backbone output (``forward_image``), in the same layout."""
    return {
        "vision_features": out["vision_features"][frames],
        "vision_pos_enc": [p[frames] for p in out["vision_pos_enc"]],
        "backbone_fpn": [f[frames] for f in out["backbone_fpn"]],
    }
