"""The optional ``distractors.json`` sidecar (written by the synthetic generator's drift split).

Real datasets do not have it; when it is absent readers behave exactly as without it. When it sits
next to a split's expression file, it maps a referent key to the ids of the salient objects the
expression does *not* refer to:

- RefCOCO: ``{"<ref_id>": [ann_id, ...]}`` (next to ``instances.json``),
- MeViS / ReVOS: ``{"<video_id>/<exp_id>": [anno_id, ...]}`` (next to ``meta_expressions.json``),
- Ref-YouTube-VOS / Ref-DAVIS17: ``{"<video_id>/<exp_id>": [obj_id, ...]}``.

Readers resolve the ids through the same annotation path as the referent's own masks and store
``referent.meta["distractor_ids"]`` (the ids) and ``referent.meta["distractor_masks"]`` (one merged
RLE per frame, ``None`` where no distractor is visible), so evaluation can measure how much of a
prediction lands on the distractor.
"""

from __future__ import annotations

from pathlib import Path

from salma.data.annotation_files import load_json_file, require_mapping
from salma.data.errors import DatasetFormatError

DISTRACTORS_FILE = "distractors.json"


def load_distractors(folder: str | Path) -> dict[str, list[int]]:
    """The sidecar in ``folder`` as ``{key: [ids]}``; empty when there is none."""
    path = Path(folder) / DISTRACTORS_FILE
    if not path.exists():
        return {}
    data = require_mapping(load_json_file(path), path)
    out: dict[str, list[int]] = {}
    for key, ids in data.items():
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise DatasetFormatError(path, f"entry {key!r} must be a list of integer ids")
        out[str(key)] = ids
    return out
