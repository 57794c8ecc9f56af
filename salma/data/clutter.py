"""The optional ``clutter.json`` sidecar (written by the synthetic generator's clutter-lure splits).

Real datasets do not have it; when it is absent readers behave exactly as without it. When it sits
next to a split's expression file it maps a referent key (as ``distractors.json`` does: RefCOCO
``"<ref_id>"``, MeViS / ReVOS / Ref-YouTube-VOS ``"<video_id>/<exp_id>"``) to::

    {"lure": true | false, "masks": [RLE or null, one per frame], "objects": [RLE or null, ...]}

``masks`` is the background clutter's region on each frame (texture that is not an object and is
not annotated as one); ``objects`` the union of every annotated object on each frame (what a
perfect class-agnostic structure prior would cover: ``mba.prior: oracle``); ``lure`` says whether
the clutter carries the attribute the expression names. Readers store
``referent.meta["clutter_masks"]``, ``["object_masks"]`` and ``["clutter_lure"]``, from which
the drift measures (``salma.drift_measures``) are computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from salma.data.annotation_files import load_json_file, require_mapping
from salma.data.errors import DatasetFormatError
from salma.data.masks import validate_rle

CLUTTER_FILE = "clutter.json"


def load_clutter(folder: str | Path) -> dict[str, dict[str, Any]]:
    """The sidecar in ``folder`` as ``{key: {"lure", "masks", "objects"}}``; empty when
    there is none. A malformed entry is an error naming the file and the entry."""
    path = Path(folder) / CLUTTER_FILE
    if not path.exists():
        return {}
    data = require_mapping(load_json_file(path), path)
    out: dict[str, dict[str, Any]] = {}
    for key, entry in data.items():
        if not isinstance(entry, dict) or set(entry) != {"lure", "masks", "objects"}:
            raise DatasetFormatError(path, f"entry {key!r} must be an object with exactly 'lure', 'masks' and 'objects'")
        if not isinstance(entry["lure"], bool) or not all(isinstance(entry[k], list) for k in ("masks", "objects")):
            raise DatasetFormatError(path, f"entry {key!r}: 'lure' must be true/false, 'masks' and 'objects' lists")
        if len(entry["masks"]) != len(entry["objects"]):
            raise DatasetFormatError(path, f"entry {key!r}: 'masks' and 'objects' must have one entry per frame each")
        for t, rle in enumerate(entry["masks"] + entry["objects"]):
            if rle is None:
                continue
            try:
                validate_rle(rle)
            except ValueError as exc:
                raise DatasetFormatError(path, f"entry {key!r}, mask {t}: {exc}; rewrite the sidecar") from exc
        out[str(key)] = {"lure": entry["lure"], "masks": entry["masks"], "objects": entry["objects"]}
    return out


def attach_clutter(records: list, clutter: dict[str, dict[str, Any]], path: str | Path, *, video: bool) -> None:
    """Store each referent's sidecar entry in its ``meta`` (in place).

    Keys are ``"<ref_id>"`` for images and ``"<video_id>/<exp_id>"`` for videos (``video``). An
    entry whose frame count or mask size disagrees with its record is an error naming the sidecar
    ``path``: the sidecar belongs to other data, and silently dropping it would hide that.
    """
    if not clutter:
        return
    for record in records:
        for referent in record.referents:
            key = f"{record.sample_id}/{referent.ref_id}" if video else str(referent.ref_id)
            entry = clutter.get(key)
            if entry is None:
                continue
            masks = entry["masks"]
            if len(masks) != record.num_frames:
                raise DatasetFormatError(
                    path, f"entry {key!r} has {len(masks)} masks for {record.num_frames} frames; "
                    "the sidecar belongs to other data: regenerate it with the dataset"
                )
            for rle in masks + entry["objects"]:
                if rle is not None and [int(v) for v in rle["size"]] != [record.height, record.width]:
                    raise DatasetFormatError(
                        path, f"entry {key!r}: mask size {list(rle['size'])}, frame size "
                        f"{[record.height, record.width]}; regenerate the sidecar with the dataset"
                    )
            referent.meta["clutter_lure"] = entry["lure"]
            referent.meta["clutter_masks"] = masks
            referent.meta["object_masks"] = entry["objects"]
