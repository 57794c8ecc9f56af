"""One training example from one record: which frames, which objects, which phrasing.

Per sample (the training recipe in docs/design.md): videos give ``num_frames`` frames (random or consecutive, then sorted) ×
up to ``max_objects`` referents; images give up to ``max_objects`` referents. Each referent is
asked about with one of its expressions, in one round of the chat. Conversation records (VQA,
video QA) keep their turns; grounded-caption records (GCG) answer with one ``[SEG]`` per phrase.

Everything random comes from the ``rng`` passed in, so an example is a pure function of
(record, seed): the training pipeline seeds it per (epoch, position) for exact replay.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from salma.config import SamplingOptions
from salma.conversation import Round, referring_round
from salma.data.decode import decode_masks, load_frames
from salma.data.errors import BadRecordError
from salma.data.examples import ImageGeometry, encode_example
from salma.data.record import Referent, SampleRecord


def sample_frame_positions(num_frames: int, options: SamplingOptions, rng: random.Random) -> list[int]:
    """Sorted positions of the frames to use (all of them when the video is short)."""
    if num_frames <= options.num_frames:
        return list(range(num_frames))
    if options.frame_sampling == "consecutive":
        start = rng.randrange(num_frames - options.num_frames + 1)
        return list(range(start, start + options.num_frames))
    return sorted(rng.sample(range(num_frames), options.num_frames))


@dataclass(frozen=True)
class SampleCounts:
    """What ``sample_example`` makes of a record, known before decoding anything: the SAM-2
    frames, the objects (referents, each with a mask on every frame) and whether it is a video
    (whose objects SAM-2 also tracks in training)."""

    frames: int
    objects: int
    video: bool

    @property
    def pairs(self) -> int:
        """(object, frame) pairs: SAM-2's mask decoder and the mask loss run once per pair."""
        return self.frames * self.objects


def sample_counts(record: SampleRecord, options: SamplingOptions) -> SampleCounts:
    """The counts ``sample_example`` fixes: frames 1 for an image, ``min(num_frames, frames)``
    for a video, 0 for text; objects ``min(max_objects, referents)``, or every phrase of a
    grounded caption, 0 for a question-answer record."""
    if record.media == "none":
        frames = 0
    elif record.media == "image":
        frames = 1
    else:
        frames = min(options.num_frames, record.num_frames)
    if record.conversation:
        objects = len(record.referents)
    else:
        objects = min(options.max_objects, len(record.referents))
    return SampleCounts(frames=frames, objects=objects, video=record.media == "video")


def sample_example(
    record: SampleRecord, *, rng: random.Random, options: SamplingOptions, tokenizer, geometry: ImageGeometry
) -> dict[str, np.ndarray]:
    """Decode, sample and encode one record. Raises ``BadRecordError`` for unusable input."""
    media = record.media
    if media == "none":
        positions: list[int] = []
    elif media == "image":
        positions = [0]
    else:
        positions = sample_frame_positions(record.num_frames, options, rng)
    frames = load_frames(record, positions) if positions else []
    if record.conversation and not record.referents:  # VQA / video QA: no masks
        rounds = [Round(prefix=t.question, answer=t.answer) for t in record.conversation]
        example = encode_example(
            frames=frames, masks=None, rounds=rounds, media=media, tokenizer=tokenizer, geometry=geometry
        )
        return _within_context(example, record, geometry)
    height, width = frames[0].shape[:2]
    if record.conversation:  # grounded captioning: every referent, in caption order
        referents = record.referents
        rounds = [Round(prefix=t.question, answer=t.answer) for t in record.conversation]
    else:
        count = sample_counts(record, options).objects
        referents = [record.referents[i] for i in sorted(rng.sample(range(len(record.referents)), count))]
        rounds = [referring_round(rng.choice(r.expressions), media=media, rng=rng) for r in referents]
    masks = np.stack([decode_masks(r, positions, height, width) for r in referents])  # (O, F, H, W)
    return _within_context(
        encode_example(
            frames=frames, masks=masks, rounds=rounds, media=media, tokenizer=tokenizer, geometry=geometry,
            frame_annotations=frame_annotations(referents, positions, height, width),
        ),
        record, geometry,
    )


def _within_context(
    example: dict[str, np.ndarray], record: SampleRecord, geometry: ImageGeometry
) -> dict[str, np.ndarray]:
    """The example, unless its token sequence (image tokens, questions, answers) is longer than
    the language model's context: then it is a bad record, not truncated. Cutting it would drop
    answer tokens or ``[SEG]`` positions (and with them masks) from the end of the chat, so the
    rule is to reject and count it (reason "sequence longer than the model context")."""
    length = len(example["input_ids"])
    if geometry.context_tokens is not None and length > geometry.context_tokens:
        path = record.meta.get("annotation_file") or next(
            (r.meta["mask_file"] for r in record.referents if "mask_file" in r.meta), record.sample_id)
        raise BadRecordError(path, "sequence longer than the model context", sample_id=record.sample_id,
                             detail=f"{length} tokens, the model has {geometry.context_tokens} positions")
    return example


def frame_annotations(referents: list, positions: list[int], height: int, width: int) -> dict[str, np.ndarray] | None:
    """The clutter sidecar's frame-level masks and lure flags (``salma.data.clutter``), when every
    referent has them; they describe the frame, so the first referent's masks are taken."""
    if not referents or not all("clutter_masks" in r.meta and "object_masks" in r.meta for r in referents):
        return None
    first = referents[0]
    views = {
        key: Referent(first.ref_id, [], [], first.meta[key], {"mask_file": first.meta.get("mask_file")})
        for key in ("object_masks", "clutter_masks")
    }
    return {
        "objects": decode_masks(views["object_masks"], positions, height, width),
        "clutter": decode_masks(views["clutter_masks"], positions, height, width),
        "lure": np.asarray([1 if r.meta["clutter_lure"] else 0 for r in referents], dtype=np.int8),
    }
