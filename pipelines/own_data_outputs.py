"""What ``salma infer`` writes for your own data (format ``own_data``), beside the shards.

    <out>/masks/<media path>/<id>.png            an image's mask per expression (0/255 PNG)
    <out>/masks/<media path>/<id>/<frame>.png    a video's masks per expression, one per frame
    <out>/overlays/<media path>/<id>.png         with --overlays: the mask drawn over the image
    <out>/overlays/<media path>/<id>/<frame>.jpg   ... over every frame of a video
    <out>/results.json       one entry per expression: {"id", "image" | "video", "expression",
                             "answer", "masks": [PNG paths relative to <out>],
                             "segmentation": COCO RLE (images) | "prediction_masks": [RLE per frame]}

``<media path>`` is the image or video path as the JSON Lines file names it; ``<id>`` the line's
``id`` (``line<N>`` by default), with ``_<k>`` added for the k-th phrasing (k >= 1) of a line
with several. Every file is written atomically, before the record's shard, so a rerun after a
crash redoes a record whose files may be incomplete.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.overlay import draw_overlay
from pipelines.prediction_folder import (
    DIAGNOSTICS,
    RESULTS,
    SHARDS_DIR,
    diagnostic_entry,
    prediction_id,
    shard_key,
    write_json_atomic,
    write_png_atomic,
)
from salma.data.decode import load_frames
from salma.data.masks import decode_rle
from salma.data.own_data import media_folder_name
from salma.data.record import SampleRecord

MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"


def mask_paths(shard: dict, prediction: dict) -> list[str]:
    """The PNGs of one prediction, relative to the output folder."""
    folder = f"{MASKS_DIR}/{media_folder_name(shard['sample_id'])}"
    name = prediction_id(prediction["ref_id"], prediction["sent_index"])
    if shard["media"] == "image":
        return [f"{folder}/{name}.png"]
    return [f"{folder}/{name}/{frame}.png" for frame in shard["frame_names"]]


def write_own_outputs(out: Path, shard: dict, record: SampleRecord, *, overlays: bool) -> None:
    """The masks (and overlays) of one record's shard."""
    for prediction in shard["predictions"]:
        for path, rle in zip(mask_paths(shard, prediction), prediction["masks"], strict=True):
            write_png_atomic(out / path, decode_rle(rle))
    if overlays:
        frames = load_frames(record, range(record.num_frames))
        for prediction in shard["predictions"]:
            for path, rle, frame in zip(mask_paths(shard, prediction), prediction["masks"], frames, strict=True):
                target = out / OVERLAYS_DIR / Path(path).relative_to(MASKS_DIR)
                if shard["media"] == "video":
                    target = target.with_suffix(".jpg")
                write_image_atomic(target, draw_overlay(frame, [decode_rle(rle)]))


def write_image_atomic(path: Path, pixels: np.ndarray) -> None:
    """(H, W, 3) uint8 RGB as PNG or JPEG (by suffix), written under a temporary name first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(pixels).save(tmp, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    os.replace(tmp, path)


def merge_own_results(out: Path, records: Sequence[SampleRecord]) -> Path:
    """``results.json`` (the module docstring) and ``diagnostics.json`` from the shards."""
    import json

    results: list[dict[str, Any]] = []
    diagnostics = []
    for record in records:
        shard = json.loads((out / SHARDS_DIR / f"{shard_key(record.sample_id)}.json").read_text())
        for p in shard["predictions"]:
            entry: dict[str, Any] = {
                "id": prediction_id(p["ref_id"], p["sent_index"]), "sample_id": record.sample_id,
                "ref_id": p["ref_id"], "sent_index": p["sent_index"], record.media: record.sample_id,
                "expression": p["expression"], "answer": p["answer"], "masks": mask_paths(shard, p),
            }
            if record.media == "image":
                entry["segmentation"] = p["masks"][0]
            else:
                entry["prediction_masks"] = p["masks"]
            results.append(entry)
            diagnostics.append(diagnostic_entry(record, p))
    write_json_atomic(out / DIAGNOSTICS, diagnostics)
    write_json_atomic(out / RESULTS, results)
    return out / RESULTS
