"""From decoded frames, masks and text to model inputs: one example per sample, then a batch.

``encode_example`` turns one sample (frames as uint8 arrays, masks as bool arrays, the chat rounds)
into a dict of numpy arrays — small and uint8 where possible, because these rows travel through
Ray Data's object store. ``collate`` normalises and concatenates examples into a ``SalmaBatch``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from salma.batch import SalmaBatch
from salma.conversation import Round, encode_rounds
from salma.image_transforms import dynamic_tiles, resize_masks, resize_square, to_normalized_tensor


@dataclass(frozen=True)
class ImageGeometry:
    """How frames are cut and sized for the two branches (from the model config)."""

    tile_size: int
    min_tiles: int
    max_tiles: int
    use_thumbnail: bool
    tokens_per_tile: int
    sam_size: int
    # The language model's context (positions); None when the config does not give it (a model
    # loaded from ``mllm.path`` carries its own, which this does not read).
    context_tokens: int | None = None

    @classmethod
    def from_config(cls, config) -> "ImageGeometry":
        m = config.mllm
        return cls(
            tile_size=m.tile_size,
            min_tiles=m.min_tiles,
            max_tiles=m.max_tiles,
            use_thumbnail=m.use_thumbnail,
            tokens_per_tile=m.tokens_per_tile,
            sam_size=config.sam.image_size,
            context_tokens=m.text.max_position_embeddings if m.path is None else None,
        )


def mllm_tiles(frames: list[np.ndarray], media: str, geometry: ImageGeometry) -> list[np.ndarray]:
    """An image gets dynamic tiling; each video frame is one tile (docs/design.md)."""
    g = geometry
    if media == "image":
        return dynamic_tiles(
            frames[0], tile_size=g.tile_size, min_tiles=g.min_tiles, max_tiles=g.max_tiles, use_thumbnail=g.use_thumbnail
        )
    return [resize_square(f, g.tile_size) for f in frames]


def tokens_per_image(num_tiles: int, media: str, geometry: ImageGeometry) -> list[int]:
    if media == "image":
        return [num_tiles * geometry.tokens_per_tile]
    return [geometry.tokens_per_tile] * num_tiles


def encode_example(
    *,
    frames: list[np.ndarray],
    masks: np.ndarray | None,
    rounds: list[Round],
    media: str,
    tokenizer,
    geometry: ImageGeometry,
    frame_annotations: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """One sample → arrays.

    frames: list of F (H, W, 3) uint8 (empty for text-only); masks: (O, F, H, W) bool, one row per
    referent in the order of the ``[SEG]`` answers in ``rounds`` (None or O = 0 for no masks).
    frame_annotations: optional ``{"objects": (F, H, W) bool, "clutter": (F, H, W) bool,
    "lure": (O,) int8}`` (see ``SalmaBatch``), stored resized as ``frame_object_masks``,
    ``frame_clutter_masks`` and ``object_lure``.
    """
    if not rounds:
        raise ValueError("an example needs at least one conversation round")
    tiles = mllm_tiles(frames, media, geometry) if frames else []
    encoded = encode_rounds(tokenizer, rounds, tokens_per_image=tokens_per_image(len(tiles), media, geometry))
    g = geometry
    sam_frames = np.stack([resize_square(f, g.sam_size) for f in frames]) if frames else np.zeros(
        (0, g.sam_size, g.sam_size, 3), np.uint8
    )
    num_objects = 0 if masks is None else masks.shape[0]
    if num_objects:
        o, f, h, w = masks.shape
        gt = resize_masks(masks.reshape(o * f, h, w), g.sam_size).reshape(o, f, g.sam_size, g.sam_size)
    else:
        gt = np.zeros((0, len(frames), g.sam_size, g.sam_size), dtype=bool)
    # One row per object: referring rounds carry one expression each; a grounded caption has
    # several [SEG]s in one answer and no expression in the prompt (all -1 rows).
    expr = encoded.expression_positions[:num_objects]
    expr += [[] for _ in range(num_objects - len(expr))]
    width = max((len(p) for p in expr), default=0)
    expr_positions = np.full((num_objects, width), -1, dtype=np.int64)
    for i, p in enumerate(expr):
        expr_positions[i, : len(p)] = p
    extra = {}
    if frame_annotations is not None:
        extra = {
            "frame_object_masks": resize_masks(frame_annotations["objects"], g.sam_size),
            "frame_clutter_masks": resize_masks(frame_annotations["clutter"], g.sam_size),
            "object_lure": np.asarray(frame_annotations["lure"], dtype=np.int8),
        }
    return extra | {
        "input_ids": np.asarray(encoded.input_ids, dtype=np.int64),
        "labels": np.asarray(encoded.labels, dtype=np.int64),
        "tiles": np.stack(tiles) if tiles else np.zeros((0, g.tile_size, g.tile_size, 3), np.uint8),
        "sam_frames": sam_frames,
        "gt_masks": gt,
        "expr_positions": expr_positions,
    }


def collate(examples: list[dict[str, np.ndarray]], *, pad_token_id: int) -> SalmaBatch:
    """Right-pad token sequences and concatenate images, objects and (object, frame) pairs."""
    if not examples:
        raise ValueError("collate needs at least one example")
    max_len = max(len(e["input_ids"]) for e in examples)
    max_expr = max(e["expr_positions"].shape[1] for e in examples)
    input_ids, attention, labels = [], [], []
    tiles, sam_frames, frame_sample, seg_sample, expr_rows = [], [], [], [], []
    pair_obj, pair_frame, gt = [], [], []
    frame_offset = object_offset = 0
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        pad = max_len - n
        input_ids.append(np.pad(e["input_ids"], (0, pad), constant_values=pad_token_id))
        attention.append(np.pad(np.ones(n, np.int64), (0, pad)))
        labels.append(np.pad(e["labels"], (0, pad), constant_values=-100))
        tiles.append(e["tiles"])
        f = e["sam_frames"].shape[0]
        sam_frames.append(e["sam_frames"])
        frame_sample.extend([b] * f)
        o = e["gt_masks"].shape[0]
        seg_sample.extend([b] * o)
        rows = e["expr_positions"]
        expr_rows.append(np.pad(rows, ((0, 0), (0, max_expr - rows.shape[1])), constant_values=-1))
        for i in range(o):
            for t in range(f):
                pair_obj.append(object_offset + i)
                pair_frame.append(frame_offset + t)
                gt.append(e["gt_masks"][i, t])
        frame_offset += f
        object_offset += o
    sam_size = examples[0]["sam_frames"].shape[1]
    tile_arr = np.concatenate(tiles)
    frame_arr = np.concatenate(sam_frames)
    batch = SalmaBatch(
        input_ids=torch.from_numpy(np.stack(input_ids)),
        attention_mask=torch.from_numpy(np.stack(attention)),
        labels=torch.from_numpy(np.stack(labels)),
        pixel_values=to_normalized_tensor(tile_arr) if len(tile_arr) else torch.zeros(0, 3, *tile_arr.shape[1:3]),
        sam_pixel_values=to_normalized_tensor(frame_arr) if len(frame_arr) else torch.zeros(0, 3, sam_size, sam_size),
        frame_sample_index=torch.tensor(frame_sample, dtype=torch.long),
        seg_sample_index=torch.tensor(seg_sample, dtype=torch.long),
        expr_positions=torch.from_numpy(np.concatenate(expr_rows)).long(),
        pair_object_index=torch.tensor(pair_obj, dtype=torch.long),
        pair_frame_index=torch.tensor(pair_frame, dtype=torch.long),
        gt_masks=torch.from_numpy(np.stack(gt)) if gt else torch.zeros(0, sam_size, sam_size, dtype=torch.bool),
        mask_weight=torch.ones(len(pair_obj)),
        **_frame_annotations(examples),
    )
    batch.validate()
    return batch


def _frame_annotations(examples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """The optional frame-level fields, when every example of the batch has them."""
    names = ("frame_object_masks", "frame_clutter_masks", "object_lure")
    if not all(all(n in e for n in names) for e in examples):
        return {}
    return {n: torch.from_numpy(np.concatenate([e[n] for e in examples])) for n in names}


def example_to_bytes(example: dict[str, np.ndarray]) -> bytes:
    """Serialise an example for a Ray Data row (``.npz``; no pickle, so rows are safe to load)."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **example)
    return buffer.getvalue()


def example_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    import io

    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
