"""Ref-SAV reader: SA-V videos (mp4) + masklet JSON + Sa2VA's referring expressions.

Layout::

    <root>/<expression_file>        default ``Ref-SAV.json``:
        {video_id: {"video_path": "sav_train/sav_000/sav_000001.mp4",
                    "anno_path": "sav_train/sav_000/sav_000001_manual.json",
                    "objects": {"<masklet index>": {"formated": long expression,
                                                   "short_caps": [short expressions]}}}}
    <root>/<video_path>, <root>/<anno_path>
        Paths are tried as given under ``root`` and, failing that, without their first folder
        (Sa2VA joins them to its SA-V folder that way).
    SA-V masklet JSON: {"video_frame_count", "video_height", "video_width",
                        "masklet": [[RLE per object] per annotated frame], ...}

SA-V annotates every 4th frame of its 24 fps videos (6 fps masklets), so masklet entry ``i`` is
video frame ``i * annotation_interval``. The record keeps every ``stride``-th annotated frame:
``record.video_path`` is the mp4, ``record.frame_indices`` the decoded frame numbers, ``frames``
is empty, and each referent (one per object: ``ref_id`` = masklet index, expressions = the long
expression then the short ones) has one mask per kept frame. Frames are decoded with OpenCV by
``salma.data.decode.load_frames``. Masklet files are read at index time (one per video).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from salma.data.annotation_files import load_json_file, require_mapping
from salma.data.errors import BadRecordReporter, DatasetFormatError, OnBad
from salma.data.confinement import OutsideRootError, confined_path, plain_name_problem
from salma.data.masks import check_image_size, stored_rle
from salma.data.record import Referent, SampleRecord
from salma.data.video_expressions import clean_expression
from salma.data.formats import register_format, splits_matching


@register_format(
    "ref_sav", media="video", scoring="video",
    splits=lambda root, expression_file, **_: splits_matching(root, expression_file),
)
def read_ref_sav(
    root: str | Path,
    split: str,
    *,
    expression_file: str = "Ref-SAV.json",
    annotation_interval: int = 4,
    stride: int = 1,
    check_files: bool = True,
    allow_outside_root: bool = False,
    on_bad: OnBad | None = None,
) -> list[SampleRecord]:
    """Read Ref-SAV; ``{split}`` in ``expression_file`` is replaced by the split name."""
    if annotation_interval < 1 or stride < 1:
        raise ValueError("annotation_interval and stride must be >= 1")
    root_dir = Path(root).absolute()
    expressions_path = root_dir / expression_file.format(split=split)
    videos = require_mapping(load_json_file(expressions_path), expressions_path)
    reporter = BadRecordReporter(on_bad, reader="read_ref_sav", root=root, split=split)
    records = []
    for video_id, entry in videos.items():
        record = _record(
            str(video_id), entry, root_dir, split, expressions_path, annotation_interval, stride, check_files, reporter,
            allow_outside_root,
        )
        if record is not None:
            records.append(record)
    reporter.finish()
    return records


def _resolve(root_dir: Path, relative: str, allow_outside_root: bool) -> Path:
    """The path under ``root``, or without its first folder; OutsideRootError when it leaves
    ``root`` (``salma.data.confinement``)."""
    path = confined_path(root_dir, relative, allow_outside_root=allow_outside_root)
    parts = Path(relative).parts
    if not path.exists() and len(parts) > 1:
        stripped = confined_path(root_dir, str(Path(*parts[1:])), allow_outside_root=allow_outside_root)
        if stripped.exists():
            return stripped
    return path


def _record(
    video_id: str,
    entry: Any,
    root_dir: Path,
    split: str,
    expressions_path: Path,
    annotation_interval: int,
    stride: int,
    check_files: bool,
    reporter: BadRecordReporter,
    allow_outside_root: bool,
) -> SampleRecord | None:
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("video_path", "anno_path")):
        reporter.report(
            expressions_path, "malformed entry", sample_id=video_id, detail="needs video_path and anno_path"
        )
        return None
    objects = entry.get("objects")
    if not isinstance(objects, dict):
        reporter.report(expressions_path, "malformed entry", sample_id=video_id, detail="'objects' is not an object")
        return None
    problem = plain_name_problem(video_id)
    if problem is not None:
        reporter.report(expressions_path, "id is not a plain name", sample_id=video_id, detail=problem)
        return None
    try:
        video_path = _resolve(root_dir, entry["video_path"], allow_outside_root)
        anno_path = _resolve(root_dir, entry["anno_path"], allow_outside_root)
    except OutsideRootError as exc:
        reporter.report(expressions_path, "path outside the dataset root", sample_id=video_id, detail=str(exc))
        return None
    if check_files and not video_path.is_file():
        reporter.report(video_path, "missing video file", sample_id=video_id)
        return None
    if not anno_path.is_file():
        reporter.report(anno_path, "missing annotation file", sample_id=video_id)
        return None
    try:
        annotation = require_mapping(load_json_file(anno_path), anno_path)
        masklet = annotation["masklet"]
        # SA-V stores the size as floats (``1080.0``).
        height, width = check_image_size(int(float(annotation["video_height"])), int(float(annotation["video_width"])))
        frame_count = int(float(annotation.get("video_frame_count", len(masklet) * annotation_interval)))
    except (DatasetFormatError, KeyError, TypeError, ValueError) as exc:
        reporter.report(anno_path, "malformed entry", sample_id=video_id, detail=str(exc))
        return None
    if not isinstance(masklet, list) or not masklet:
        reporter.report(anno_path, "video has no frames", sample_id=video_id, detail="empty masklet")
        return None
    positions = list(range(0, len(masklet), stride))
    frame_indices = [p * annotation_interval for p in positions]
    if frame_indices[-1] >= frame_count:
        reporter.report(
            anno_path,
            "frame index past the end of the video",
            sample_id=video_id,
            detail=f"masklet frame {positions[-1]} is video frame {frame_indices[-1]}, video has {frame_count}",
        )
        return None

    referents = []
    for object_key, description in objects.items():
        problem = plain_name_problem(object_key)
        if problem is not None:
            reporter.report(expressions_path, "id is not a plain name", sample_id=f"{video_id}/{object_key}",
                            detail=problem)
            continue
        referent = _referent(
            video_id, str(object_key), description, masklet, positions, (height, width), anno_path,
            expressions_path, reporter,
        )
        if referent is not None:
            referents.append(referent)
    if not referents:
        reporter.report(expressions_path, "no usable referents", sample_id=video_id)
        return None
    return SampleRecord(
        source="ref_sav",
        split=split,
        sample_id=video_id,
        media="video",
        height=height,
        width=width,
        referents=referents,
        video_path=str(video_path),
        frame_indices=frame_indices,
        meta={"annotation_file": str(anno_path), "annotation_interval": annotation_interval, "has_ground_truth": True},
    )


def _referent(
    video_id: str,
    object_key: str,
    description: Any,
    masklet: list,
    positions: list[int],
    size: tuple[int, int],
    anno_path: Path,
    expressions_path: Path,
    reporter: BadRecordReporter,
) -> Referent | None:
    key = f"{video_id}/{object_key}"
    if not isinstance(description, dict):
        reporter.report(expressions_path, "malformed entry", sample_id=key, detail="object entry is not an object")
        return None
    texts = [description.get("formated")] + list(description.get("short_caps") or [])
    expressions = [t for t in (clean_expression(x) for x in texts) if t is not None]
    if not expressions:
        reporter.report(expressions_path, "empty expression", sample_id=key)
        return None
    try:
        index = int(object_key)
        masks = [stored_rle(masklet[p][index]) for p in positions]
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        reporter.report(anno_path, "object missing from annotations", sample_id=key, detail=repr(exc))
        return None
    for p, rle in zip(positions, masks):
        if [int(s) for s in rle["size"]] != list(size):
            reporter.report(
                anno_path,
                "mask size disagrees with frame",
                sample_id=key,
                detail=f"masklet frame {p}: {list(rle['size'])} vs video {list(size)}",
            )
            return None
    kinds = ["long"] * (clean_expression(description.get("formated")) is not None)
    kinds += ["short"] * (len(expressions) - len(kinds))
    return Referent(
        ref_id=object_key,
        object_ids=[index],
        expressions=expressions,
        masks=masks,
        meta={"mask_file": str(anno_path), "expression_kinds": kinds},
    )
