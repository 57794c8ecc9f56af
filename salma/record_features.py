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
    @torch.no_grad()
    def encode(
        cls, model: SalmaModel, frames: list[np.ndarray], keys: list[int], geometry: ImageGeometry, device: torch.device
    ) -> RecordFeatures:
        media = "video" if len(frames) > 1 else "image"
        key_images = [frames[i] for i in keys]
        tiles = mllm_tiles(key_images, media, geometry)
        image_features = model.mllm.image_features(to_normalized_tensor(tiles).to(device))
        if media == "video":
            sam_images = to_normalized_tensor([resize_square(f, geometry.sam_size) for f in frames]).to(device)
            key_sam = sam_images[keys]
        else:
            sam_images = None
            key_sam = to_normalized_tensor([resize_square(f, geometry.sam_size) for f in key_images]).to(device)
        sam = model.encode_frames(key_sam, keep_backbone_out=media == "video")
        height, width = frames[0].shape[:2]
        return cls(
            media=media,
            keys=keys,
            height=height,
            width=width,
            image_features=image_features,
            tokens_per_image=tokens_per_image(len(tiles), media, geometry),
            sam=sam,
            priors=model.frame_priors(sam),
            sam_images=sam_images,
        )

    def tracker_features(self) -> dict[int, tuple[torch.Tensor, dict]]:
        """Frame index → ``(image, backbone_out)`` of each key frame, in the form SAM-2's video
        predictor keeps in ``inference_state["cached_features"]`` (batch of one frame)."""
        if self.sam_images is None or self.sam.backbone_out is None:
            raise ValueError("tracker features exist for videos only (encode keeps the backbone output there)")
        out = self.sam.backbone_out
        pinned = {}
        for j, t in enumerate(self.keys):
            one = {
                "vision_features": out["vision_features"][j : j + 1],
                "vision_pos_enc": [p[j : j + 1] for p in out["vision_pos_enc"]],
                "backbone_fpn": [f[j : j + 1] for f in out["backbone_fpn"]],
            }
            pinned[t] = (self.sam_images[t].float().unsqueeze(0), one)
        return pinned
