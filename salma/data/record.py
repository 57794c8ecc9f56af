"""The sample record every dataset reader yields.

A reader turns one on-disk dataset format into ``SampleRecord`` objects; everything downstream
(the Ray Data pipeline, the predictor's batch inference, evaluation) consumes only this record,
so a new format needs a new reader, registered with ``salma.data.formats.register_format``, and
nothing else.

Conventions
- Paths are absolute strings.
- Masks are COCO RLE dicts ``{"size": [h, w], "counts": str}`` (pycocotools' compressed form with
  ``counts`` decoded to ``str`` so the record is JSON-serialisable), one entry per frame of the
  record; ``None`` means "no annotation for this object on this frame", which for the video
  benchmarks (MeViS, ReVOS) means the object is absent and the ground truth is an empty mask.
- ``frames`` lists every frame of a video in temporal order (one entry for an image). For sources
  stored as an mp4 (Ref-SAV) ``video_path`` is set and ``frame_indices`` gives the decoded frame
  numbers that ``frames``' positions correspond to; ``frames`` is then empty.
- Records round-trip through JSON (``to_json`` / ``from_json``): that is how Ray Data carries
  them between processes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Media = Literal["image", "video", "none"]


@dataclass
class Referent:
    """One thing to segment in a record: an object (or a set of objects, merged) and its phrases.

    ``ref_id`` is the benchmark's own key for results files (RefCOCO ``ref_id``, MeViS / ReVOS /
    Ref-YouTube-VOS ``exp_id``). ``expressions`` holds every phrasing of the same referent
    (RefCOCO refs have several sentences); video benchmarks have one expression per referent.
    ``masks`` has one entry per frame of the record.
    """

    ref_id: str
    object_ids: list[int]
    expressions: list[str]
    masks: list[dict[str, Any] | None]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Turn:
    """One question/answer exchange of a conversation (VQA, video QA, grounded captioning)."""

    question: str
    answer: str


@dataclass
class SampleRecord:
    source: str
    split: str
    sample_id: str
    media: Media
    height: int
    width: int
    frames: list[str] = field(default_factory=list)
    referents: list[Referent] = field(default_factory=list)
    conversation: list[Turn] = field(default_factory=list)
    video_path: str | None = None
    frame_indices: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        if self.video_path is not None and self.frame_indices is not None:
            return len(self.frame_indices)
        return len(self.frames)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "SampleRecord":
        raw = json.loads(text)
        raw["referents"] = [Referent(**r) for r in raw.get("referents", [])]
        raw["conversation"] = [Turn(**t) for t in raw.get("conversation", [])]
        return cls(**raw)
