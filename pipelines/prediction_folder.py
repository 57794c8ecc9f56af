"""The output folder of ``salma infer``: its layout, atomic writes, shards and the merge.

Every file is written under a temporary name in its folder, flushed, and renamed into place
(``os.replace``), so a reader (or a rerun after a crash) sees a complete file or none. A record's
shard is written last, after its PNGs: a complete shard on disk means the record is done, and a
rerun skips it. ``results.json`` is merged from the shards once every record is done. The layout
is described in ``pipelines.infer``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from salma.data.confinement import plain_name_problem
from salma.data.masks import decode_rle
from salma.data.record import SampleRecord

logger = logging.getLogger(__name__)

SHARD_VERSION = 1
RUN_INFO = "run_info.json"
RESULTS = "results.json"
DIAGNOSTICS = "diagnostics.json"
BAD_RECORDS = "bad_records.json"
SUBMISSION = "submission.zip"
SHARDS_DIR = "shards"
ANNOTATIONS_DIR = "Annotations"
VISUALS_DIR = "visuals"
# Settings that change predictions: a folder holding predictions made with other values is refused.
IDENTITY_KEYS = ("model", "format", "root", "split", "options", "generate", "num_key_frames",
                 "key_frame_sampling", "max_new_tokens")


class OutputFolderError(RuntimeError):
    """The output folder holds predictions made with another model or other settings, or an
    output path would not be a plain name inside it."""


def inside_out(out: Path, *names: str) -> Path:
    """``out / names[0] / names[1] / ...``, each name a plain file name (ids from the dataset
    become folder and file names here; the readers already refuse others, this is the last
    line of defence against writing outside ``out``)."""
    for name in names:
        problem = plain_name_problem(name)
        if problem is not None:
            raise OutputFolderError(f"refusing to write under {out}: {problem}")
    return out.joinpath(*names)


def shard_key(sample_id: str) -> str:
    """A file name for a record: readable prefix + hash (sample ids may hold any character)."""
    digest = hashlib.sha1(sample_id.encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', sample_id)[:80]}-{digest}"


def prediction_id(ref_id: str, sent_index: int) -> str:
    """The key of a video prediction in results.json and Annotations/: the benchmark's exp_id."""
    return ref_id if sent_index == 0 else f"{ref_id}_{sent_index}"


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, flush to disk, then ``os.replace``: readers
    see the old file or the new one, never a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, separators=(",", ":")))


def write_png_atomic(path: Path, mask: np.ndarray) -> None:
    """(H, W) bool → single-channel 8-bit PNG, 0 background / 255 foreground."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(tmp, format="PNG")
    os.replace(tmp, path)


def expected_predictions(record: SampleRecord) -> set[tuple[str, int]]:
    return {(r.ref_id, i) for r in record.referents for i in range(len(r.expressions))}


def read_complete_shard(path: Path, record: SampleRecord) -> dict | None:
    """The shard when it exists, parses and holds every sentence of the record; else None."""
    try:
        shard = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        logger.warning("%s is unreadable (%s); predicting the record again", path, err)
        return None
    ok = (
        isinstance(shard, dict) and shard.get("complete") is True and shard.get("version") == SHARD_VERSION
        and shard.get("sample_id") == record.sample_id
        and {(p["ref_id"], p["sent_index"]) for p in shard.get("predictions", [])} == expected_predictions(record)
    )
    if not ok:
        logger.warning("%s is incomplete or stale; predicting the record again", path)
        return None
    return shard


def write_record_outputs(out: Path, shard: dict, png: bytes | None, *, annotations: bool = True) -> None:
    """PNGs first, the shard last: a shard on disk means the record's outputs are complete.
    ``annotations``: a video's benchmark PNG layout (own data has its own, written before)."""
    if shard["media"] == "video" and annotations:
        for p in shard["predictions"]:
            folder = inside_out(out / ANNOTATIONS_DIR, shard["sample_id"], prediction_id(p["ref_id"], p["sent_index"]))
            for name, rle in zip(shard["frame_names"], p["masks"], strict=True):
                write_png_atomic(inside_out(folder, f"{name}.png"), decode_rle(rle))
    if png:
        (out / VISUALS_DIR).mkdir(parents=True, exist_ok=True)
        tmp = out / VISUALS_DIR / f".{shard['key']}.png.tmp"
        tmp.write_bytes(png)
        os.replace(tmp, out / VISUALS_DIR / f"{shard['key']}.png")
    write_json_atomic(out / SHARDS_DIR / f"{shard['key']}.json", shard)


def check_run_info(out: Path, info: dict[str, Any], *, write: bool = True) -> None:
    """Refuse to mix predictions of different models or settings in one folder; then record
    ``info`` (``write``)."""
    path = out / RUN_INFO
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if isinstance(old, dict):
            changed = [k for k in IDENTITY_KEYS if old.get(k) != info.get(k)]
            if changed:
                raise OutputFolderError(
                    f"{out} holds predictions made with different {', '.join(changed)} "
                    f"({', '.join(f'{k}: {old.get(k)!r} → {info.get(k)!r}' for k in changed)}); "
                    "choose another --out or pass --restart to discard them"
                )
    if write:
        write_json_atomic(path, info)


def merge_results(out: Path, records: Sequence[SampleRecord], media: str) -> Path:
    """results.json and diagnostics.json from the shards, each written atomically."""
    results: Any = {} if media == "video" else []
    diagnostics = []
    for record in records:
        shard = json.loads((out / SHARDS_DIR / f"{shard_key(record.sample_id)}.json").read_text())
        sent_ids = _sent_ids(record)
        source_ref_ids = {r.ref_id: r.meta.get("ref_id", r.ref_id) for r in record.referents}
        for p in shard["predictions"]:
            if media == "video":
                results.setdefault(record.sample_id, {})[prediction_id(p["ref_id"], p["sent_index"])] = {
                    "expression": p["expression"], "answer": p["answer"], "prediction_masks": p["masks"],
                }
            else:
                results.append({
                    "image_id": record.meta.get("image_id", record.sample_id),
                    # The ref id as the dataset has it (refs(*).p: an int), as the refer API keys it.
                    "ref_id": source_ref_ids.get(p["ref_id"], p["ref_id"]),
                    "sent_index": p["sent_index"],
                    "sent_id": sent_ids.get((p["ref_id"], p["sent_index"])),
                    "sentence": p["expression"],
                    "answer": p["answer"],
                    "segmentation": p["masks"][0],
                })
            diagnostics.append(diagnostic_entry(record, p))
    write_json_atomic(out / DIAGNOSTICS, diagnostics)
    write_json_atomic(out / RESULTS, results)
    return out / RESULTS


def diagnostic_entry(record: SampleRecord, prediction: dict) -> dict[str, Any]:
    """One prediction's line of ``diagnostics.json``."""
    p = prediction
    return {
        "sample_id": record.sample_id, "ref_id": p["ref_id"], "sent_index": p["sent_index"],
        "expression": p["expression"], "answer": p["answer"], "num_masks": p["num_masks"],
        "key_frames": p["key_frames"], "drift": p["drift"],
    }


def _sent_ids(record: SampleRecord) -> dict[tuple[str, int], Any]:
    """RefCOCO ``sent_id`` of each (ref_id, sentence index), where the reader kept every sentence
    (it drops empty ones, and then the positions no longer line up)."""
    out = {}
    for r in record.referents:
        ids = r.meta.get("sent_ids")
        if isinstance(ids, list) and len(ids) == len(r.expressions):
            out.update({(r.ref_id, i): sent_id for i, sent_id in enumerate(ids)})
    return out


def expected_annotation_folders(records: Sequence[SampleRecord]) -> set[str]:
    """``<video_id>/<exp_id>`` of every prediction of the records: what the archive must hold."""
    return {f"{r.sample_id}/{prediction_id(ref_id, i)}" for r in records for ref_id, i in expected_predictions(r)}


def zip_submission(out: Path, source_format: str, *, expected: set[str] | None = None) -> Path:
    """``submission.zip`` for the benchmark servers. Ref-YouTube-VOS (CodaLab, ReferFormer's
    instructions) takes the ``Annotations/`` folder itself; MeViS (CodaLab) takes the video folders
    at the top of the archive (its baseline zips the contents of its output folder). Others (no
    public server) get the Ref-YouTube-VOS layout. ``expected`` (``expected_annotation_folders``):
    every one must be in the archive, else ``OutputFolderError`` names the missing ones, so that
    no expression is left out silently."""
    annotations = out / ANNOTATIONS_DIR
    if expected:
        present = {p.parent.relative_to(annotations).as_posix() for p in annotations.glob("*/*/*.png")}
        missing = sorted(expected - present)
        if missing:
            raise OutputFolderError(
                f"{len(missing)} expression(s) have no PNGs under {annotations} (e.g. {missing[0]}); "
                "rerun without --restart to predict them, then zip again"
            )
    prefix = "" if source_format == "mevis" else f"{ANNOTATIONS_DIR}/"
    tmp = out / ".submission.zip.tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(annotations.rglob("*.png")):
            archive.write(path, prefix + path.relative_to(annotations).as_posix())
    os.replace(tmp, out / SUBMISSION)
    return out / SUBMISSION
