"""Inference without Ray: an image or a video plus a sentence → the answer and one mask per ``[SEG]``.

Images: the MLLM sees the dynamically tiled image; each generated ``[SEG]`` becomes a language
prompt; SAM-2 decodes it on the image after Mask-Biased Attention (the pre-pass prior is computed
once for the image).

Videos: the MLLM sees K key frames (uniformly spaced by default), one tile each. The key frames
are decoded like images — language-conditioned, with MBA — and SAM-2's memory tracker, seeded with
those masks, propagates every object to all other frames. Masks are upsampled to the original
resolution and thresholded at probability 0.5 (logit 0).

The Ray Data inference actor (``pipelines.infer``) wraps this same class.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from salma.conversation import Round, encode_rounds, referring_round
from salma.data.examples import ImageGeometry, mllm_tiles, tokens_per_image
from salma.image_transforms import resize_square, to_normalized_tensor
from salma.model import SalmaModel
from salma.tokenizer import IM_END, SEG_TOKEN

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    answer: str
    masks: list[np.ndarray]  # one per [SEG]: (H, W) bool for an image, (T, H, W) bool for a video
    key_frames: list[int] = field(default_factory=list)
    # Diagnostics of the key-frame decode (per [SEG], per key frame), for visual reports:
    prior: np.ndarray | None = None  # (K, h, w) pre-pass probability per key frame
    mba_energy: np.ndarray | None = None  # (S, K, h, w) energy of the MBA update
    language_change: np.ndarray | None = None  # (S, K, h, w) squared norm of the feature change


def key_frame_indices(num_frames: int, k: int, sampling: str = "uniform") -> list[int]:
    """K key frames out of T: uniformly spaced (first and last included) or the first K."""
    k = max(1, min(k, num_frames))
    if sampling == "first":
        return list(range(k))
    if sampling != "uniform":
        raise ValueError(f"unknown key-frame sampling {sampling!r}; use 'uniform' or 'first'")
    return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, k)})


class SalmaPredictor:
    def __init__(
        self,
        model: SalmaModel,
        *,
        num_key_frames: int = 5,
        key_frame_sampling: str = "uniform",
        max_new_tokens: int = 32,
        device: str | torch.device = "cpu",
    ):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.tokenizer = model.tokenizer
        self.geometry = ImageGeometry.from_config(model.config)
        self.num_key_frames = num_key_frames
        self.key_frame_sampling = key_frame_sampling
        self.max_new_tokens = max_new_tokens
        self.seg_token_id = self.tokenizer.convert_tokens_to_ids(SEG_TOKEN)
        self.suppress_no_object = model.config.sam.suppress_no_object

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config, **kwargs) -> "SalmaPredictor":
        from salma.builder import build_salma

        return cls(build_salma(config), **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool | None = None,
        **kwargs,
    ) -> "SalmaPredictor":
        """An exported model (``salma export``, ``salma convert sa2va``) from a local folder or a
        Hugging Face hub id (``owner/name``, through ``huggingface_hub``: from its cache when
        ``local_files_only`` or ``HF_HUB_OFFLINE=1``). Only weights and JSON are read; no code
        from the repository is ever run (``trust_remote_code`` is never enabled)."""
        from salma.export import load_exported
        from salma.hub import resolve_model_folder

        folder = resolve_model_folder(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        return cls(load_exported(folder), **kwargs)

    # ------------------------------------------------------------------ public API
    def predict(self, frames: np.ndarray | list[np.ndarray], text: str) -> Prediction:
        """Free-form instruction (``"Please segment the red circle."``); the answer decides how
        many masks come back."""
        return self._run(_as_frames(frames), Round(prefix=text.strip()))

    def segment(self, frames: np.ndarray | list[np.ndarray], expression: str, *, generate: bool = True) -> Prediction:
        """A referring expression, asked with the first training template (benchmark evaluation).

        ``generate=False`` teacher-forces the first answer template (``"It is [SEG]."``) instead of
        decoding, which guarantees exactly one mask: useful to measure the segmentation branch
        alone; the benchmark convention (and the default) is to generate.
        """
        frames = _as_frames(frames)
        media = "video" if len(frames) > 1 else "image"
        question = referring_round(expression, media=media, rng=None, answer=False)
        forced = None if generate else referring_round(expression, media=media, rng=None).answer
        return self._run(frames, question, forced_answer=forced)

    # ------------------------------------------------------------------ internals
    @torch.no_grad()
    def _run(self, frames: list[np.ndarray], question: Round, forced_answer: str | None = None) -> Prediction:
        model = self.model
        num_frames = len(frames)
        media = "video" if num_frames > 1 else "image"
        keys = key_frame_indices(num_frames, self.num_key_frames, self.key_frame_sampling) if media == "video" else [0]
        key_images = [frames[i] for i in keys]
        tiles = mllm_tiles(key_images, media, self.geometry)
        encoded = encode_rounds(self.tokenizer, [question], tokens_per_image=tokens_per_image(len(tiles), media, self.geometry))
        prompt = torch.tensor([encoded.input_ids], device=self.device)
        pixel_values = to_normalized_tensor(tiles).to(self.device)
        if forced_answer is None:
            generated = self._generate(prompt, pixel_values)
        else:
            generated = self.tokenizer(forced_answer + IM_END, add_special_tokens=False).input_ids
        answer = self.tokenizer.decode(generated, skip_special_tokens=False)
        full = torch.cat([prompt, torch.tensor([generated], dtype=torch.long, device=self.device)], dim=1)
        out = model.mllm(input_ids=full, attention_mask=torch.ones_like(full), pixel_values=pixel_values)
        seg_hidden = model.seg_hidden_states(out.hidden_states, full)  # (S, D)
        height, width = frames[0].shape[:2]
        if seg_hidden.shape[0] == 0:
            return Prediction(answer=answer, masks=[], key_frames=keys)
        num_segs = seg_hidden.shape[0]
        prompts = model.seg_projector(seg_hidden)  # (S, C)
        expr = torch.tensor(encoded.expression_positions[0] or [-1], device=self.device)
        language, language_mask = model.language_tokens(
            prompts, out.hidden_states, torch.zeros(num_segs, dtype=torch.long, device=self.device),
            expr[None].expand(num_segs, -1),
        )
        sam_frames = to_normalized_tensor([resize_square(f, self.geometry.sam_size) for f in key_images]).to(self.device)
        features = model.encode_frames(sam_frames)
        priors = model.frame_priors(features)
        k = len(keys)
        pair_obj = torch.arange(num_segs, device=self.device).repeat_interleave(k)  # (S*K,)
        pair_frame = torch.arange(k, device=self.device).repeat(num_segs)
        seg = model.segment(
            features, priors, language, language_mask, pair_obj, pair_frame, suppress_no_object=self.suppress_no_object
        )
        key_logits = seg.mask_logits.view(num_segs, k, *seg.mask_logits.shape[-2:])  # (S, K, 4h, 4w)
        if media == "image":
            masks = [self._to_original(key_logits[s], height, width)[0] for s in range(num_segs)]
        else:
            masks = self._track(frames, keys, key_logits, height, width)
        fh, fw = features.image_embed.shape[-2:]
        return Prediction(
            answer=answer,
            masks=masks,
            key_frames=keys,
            prior=None if priors is None else torch.sigmoid(priors[:, 0]).cpu().numpy(),
            mba_energy=None if seg.mba_energy is None else seg.mba_energy.view(num_segs, k, fh, fw).cpu().numpy(),
            language_change=seg.language_change.view(num_segs, k, fh, fw).cpu().numpy(),
        )

    def _generate(self, prompt: torch.Tensor, pixel_values: torch.Tensor) -> list[int]:
        """Greedy decoding until ``<|im_end|>`` or ``max_new_tokens``."""
        eos = self.tokenizer.convert_tokens_to_ids(IM_END)
        out = self.model.mllm.model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            pixel_values=pixel_values,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return out[0, prompt.shape[1] :].tolist()

    def _to_original(self, logits: torch.Tensor, height: int, width: int) -> np.ndarray:
        """(K, 4h, 4w) low-res logits → (K, H, W) bool at the original size."""
        up = F.interpolate(logits[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)
        return (up[:, 0] > 0).cpu().numpy()

    def _track(self, frames, keys, key_logits, height, width) -> list[np.ndarray]:
        """Seed SAM-2's video tracker with the key-frame masks and propagate to every frame."""
        sam = self.model.sam.sam
        images = to_normalized_tensor([resize_square(f, self.geometry.sam_size) for f in frames]).to(self.device)
        state = init_tracking_state(sam, images, height, width)
        video = propagate_key_masks(sam, state, keys, key_logits > 0)
        return list(video)


@torch.no_grad()
def propagate_key_masks(sam, state: dict, keys: list[int], key_masks: torch.Tensor) -> np.ndarray:
    """Seed SAM-2's tracker in ``state`` with the masks ``key_masks`` (S, K, h, w) bool of S
    objects on the ascending key frames ``keys`` (``add_new_mask``) and propagate them with the
    package's ``propagate_in_video``: forwards from the first key frame, then backwards from it
    when it is not frame 0. Returns (S, T, video height, video width) bool."""
    for s in range(key_masks.shape[0]):
        for j, t in enumerate(keys):
            sam.add_new_mask(state, frame_idx=t, obj_id=s, mask=key_masks[s, j])
    video = np.zeros((key_masks.shape[0], state["num_frames"], state["video_height"], state["video_width"]), dtype=bool)
    for reverse in [False] + ([True] if keys[0] > 0 else []):
        for t, _, masks in sam.propagate_in_video(state, start_frame_idx=keys[0], reverse=reverse):
            video[:, t] = (masks[:, 0] > 0).cpu().numpy()
    return video


@torch.no_grad()
def init_tracking_state(sam, images: torch.Tensor, height: int, width: int) -> dict:
    """``SAM2VideoPredictor.init_state`` for frames already in memory (the package only reads a
    JPEG folder or an mp4). Same keys as sam2 1.1.0's ``init_state``; a test compares them."""
    device = images.device
    state = {
        "images": images,
        "num_frames": images.shape[0],
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": height,
        "video_width": width,
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }
    sam._get_image_feature(state, frame_idx=0, batch_size=1)
    return state


def _as_frames(frames: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:
            return [frames]
        if frames.ndim == 4:
            return list(frames)
        raise ValueError(f"expected an (H, W, 3) image or (T, H, W, 3) frames, got shape {frames.shape}")
    if not frames:
        raise ValueError("no frames given")
    return list(frames)
