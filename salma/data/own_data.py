"""Your own images and videos: a folder and a JSON Lines file you can write by hand (format
``own_data``).

Layout::

    <root>/<split>.jsonl     one JSON object per line (blank lines are skipped), e.g. train.jsonl
    <root>/...               the images, videos, frame folders and mask PNGs the lines name

One line per object to segment::

    {"image": "photos/cat.jpg", "expression": "the cat on the left", "mask": "masks/cat_left.png"}
    {"image": "photos/cat.jpg", "expression": ["the cat on the right", "the grey cat"]}
    {"video": "clips/dog.mp4", "expression": "the running dog", "mask": "masks/dog/"}
    {"video": "frames/walk/", "expression": "the person walking"}

- ``"image"`` or ``"video"`` (exactly one): a path relative to ``root``. A video is a video file
  (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, ``.webm``, decoded with OpenCV) or a folder of frames
  (``.jpg`` / ``.jpeg`` / ``.png``, in name order).
- ``"expression"``: a sentence, or a list of phrasings of the same object; every phrasing is
  one prediction (and one training sample).
- ``"mask"`` (optional, needed for training and evaluation): the object.
  For an image: a PNG path (pixels > 0 are the object; with ``"mask_value": k`` only pixels equal
  to k, for a palette PNG of several objects) or a COCO segmentation (RLE with string or list
  counts, or polygons). For a video: a folder of PNGs named like the frames (``00012.png`` for
  frame 12 of a video file; the frame's own name for a frame folder; a frame without a PNG is
  unannotated and counts as empty, as in MeViS), or a list with one entry per frame (PNG path,
  COCO segmentation, or null).
- ``"id"`` (optional): the expression's name in the outputs (letters, digits, ``_ . -``, at most
  64 characters, unique in the file); default ``line<N>`` with N the line number.

Lines naming the same image or video become one record with one referent per line; the record's
``sample_id`` is the media path as written (normalised). A record whose every line has a mask has
ground truth (``meta["has_ground_truth"]``); a line without one has ``None`` masks and
``meta["has_mask"] = False``.

Files are untrusted: every path is relative to ``root`` (the folder holding the JSON Lines file)
and must stay inside it (no absolute paths, no ``..`` that leaves it, no symlink that resolves
outside it) unless ``allow_outside_root=True``; a line that cannot be used (not JSON, no
expression, a missing file, a mask of another size than its image, an unreadable PNG) is
reported with the file, its line and the reason (``salma.data.errors``) and dropped. A file
that is missing, not UTF-8, or in which no line is a JSON object raises ``DatasetFormatError``.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from salma.data.confinement import resolves_inside, unpaired_surrogate
from salma.data.decode import probe_image_size, probe_video
from salma.data.errors import BadRecordError, BadRecordReporter, DatasetFormatError, OnBad
from salma.data.masks import RLE, MaskSizeError, encode_mask, segmentation_to_rle
from salma.data.record import Referent, SampleRecord
from salma.data.video_expressions import clean_expression, expression_problem
from salma.data.formats import register_format, splits_matching

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass
class _Item:
    """One image or video and the referents of its lines."""

    media: str
    relative: str
    height: int
    width: int
    frames: list[str] = field(default_factory=list)  # absolute paths (image, frame folder)
    video_path: str | None = None
    frame_indices: list[int] | None = None
    frame_names: list[str] = field(default_factory=list)  # what a mask PNG of each frame is called
    referents: list[Referent] = field(default_factory=list)


class _LineError(Exception):
    """A line that cannot be used: becomes one bad-record report."""

    def __init__(self, reason: str, detail: str, path: str | Path | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.path = reason, detail, path


@register_format(
    "own_data", media="mixed", scoring="own",
    splits=lambda root, annotations, **_: splits_matching(root, annotations),
)
def read_own_data(
    root: str | Path,
    split: str,
    *,
    annotations: str = "{split}.jsonl",
    frame_stride: int = 1,
    allow_outside_root: bool = False,
    on_bad: OnBad | None = None,
) -> list[SampleRecord]:
    """Read ``<root>/<annotations>`` (``{split}`` replaced by the split name).

    ``frame_stride`` keeps every n-th frame of a video (file or folder)."""
    if frame_stride < 1:
        raise ValueError(f"frame_stride={frame_stride} must be >= 1")
    root_dir = Path(root).absolute()
    path = root_dir / annotations.format(split=split)
    reporter = BadRecordReporter(on_bad, reader="read_own_data", root=root, split=split)
    reader = _Reader(root_dir, path, frame_stride, allow_outside_root)
    items: dict[str, _Item] = {}
    ids: set[str] = set()
    for number, line in _lines(path):
        try:
            reader.add_line(number, line, items, ids)
        except _LineError as err:
            reporter.report(err.path or path, err.reason, sample_id=f"line {number}", detail=err.detail)
        except BadRecordError as err:  # a media file probe (missing, unreadable)
            reporter.report(err.path, err.reason, sample_id=f"line {number}", detail=err.detail)
    records = [_record(item, split, path) for item in items.values()]
    reporter.finish()
    return records


def _lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON or the raw text when it does not parse) of every non-blank line;
    a file with no JSON object at all is not JSON Lines and raises ``DatasetFormatError``."""
    if not path.is_file():
        raise DatasetFormatError(
            path, 'file not found (one JSON object per line, e.g. {"image": "cat.jpg", "expression": "the cat"}: '
            "see docs/inference.md)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetFormatError(path, f"not UTF-8 text: {err}") from None
    parsed = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            parsed.append((number, json.loads(raw)))
        except json.JSONDecodeError:
            parsed.append((number, raw))
    if not any(isinstance(value, dict) for _, value in parsed):
        raise DatasetFormatError(
            path, 'no line is a JSON object; write one object per line, e.g. {"image": "a.jpg", "expression": "the cat"}'
        )
    yield from parsed


class _Reader:
    def __init__(self, root: Path, annotation_path: Path, frame_stride: int, allow_outside_root: bool):
        self.root, self.annotation_path = root, annotation_path
        self.frame_stride, self.allow_outside_root = frame_stride, allow_outside_root

    def add_line(self, number: int, line: Any, items: dict[str, _Item], ids: set[str]) -> None:
        if not isinstance(line, dict):
            raise _LineError("malformed entry", f"line {number} is not a JSON object: {str(line)[:80]!r}")
        kinds = [k for k in ("image", "video") if k in line]
        if len(kinds) != 1 or not isinstance(line[kinds[0]], str):
            raise _LineError("malformed entry", f"line {number} needs exactly one of \"image\" or \"video\" (a path)")
        unknown = sorted(set(line) - {"image", "video", "expression", "mask", "mask_value", "id"})
        if unknown:
            raise _LineError("malformed entry", f"line {number} has unknown keys {unknown}")
        expressions = _expressions(line.get("expression"))
        if not expressions:
            first = line.get("expression")
            first = first[0] if isinstance(first, list) and first else first
            raise _LineError(expression_problem(first) or "empty expression", f"line {number} has no usable expression")
        ref_id = line.get("id", f"line{number}")
        if not isinstance(ref_id, str) or not ID_PATTERN.fullmatch(ref_id) or ref_id in (".", ".."):
            raise _LineError("malformed entry", f"line {number}: id {ref_id!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        if ref_id in ids:
            raise _LineError("malformed entry", f"line {number}: id {ref_id!r} is used by an earlier line")
        relative = self._relative(line[kinds[0]], number)
        item = items.get(relative) or self._item(kinds[0], relative, number)
        if item.media != kinds[0]:
            raise _LineError("malformed entry", f"line {number}: {relative} is named as an image and as a video")
        masks, has_mask = self._masks(line, item, number)
        ids.add(ref_id)
        items[relative] = item
        item.referents.append(Referent(
            ref_id=ref_id, object_ids=[number], expressions=expressions, masks=masks,
            meta={"line": number, "has_mask": has_mask, "mask_file": str(self.annotation_path)},
        ))

    # ------------------------------------------------------------------ paths and media
    def _relative(self, text: str, number: int) -> str:
        """The normalised relative path; refuses one that leaves ``root``."""
        if "\x00" in text or unpaired_surrogate(text) is not None:
            raise _LineError("malformed entry", f"line {number}: {text!r} holds NUL or an unpaired surrogate")
        normal = posixpath.normpath(text.replace("\\", "/"))
        outside = posixpath.isabs(normal) or normal == ".." or normal.startswith("../")
        if not outside and not self.allow_outside_root and not resolves_inside(self.root / normal, self.root):
            outside = True  # a symlink inside the folder that points out of it (or a symlink loop)
        if outside and not self.allow_outside_root:
            raise _LineError("path outside the dataset root", f"line {number}: {text!r} leaves the dataset folder "
                             "(paths are relative to it; the reader option allow_outside_root permits it)")
        return normal

    def _path(self, relative: str) -> Path:
        return Path(relative) if posixpath.isabs(relative) else self.root / relative

    def _item(self, media: str, relative: str, number: int) -> _Item:
        path = self._path(relative)
        if media == "image":
            height, width = probe_image_size(path, missing_reason="missing image file")
            return _Item("image", relative, height, width, frames=[str(path)], frame_names=[path.stem])
        if path.is_dir():
            frames = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)[:: self.frame_stride]
            if not frames:
                raise _LineError("video has no frames", f"line {number}: {relative} holds no .jpg/.jpeg/.png frames", path)
            height, width = probe_image_size(frames[0])
            return _Item("video", relative, height, width, frames=[str(p) for p in frames],
                         frame_names=[p.stem for p in frames])
        if path.suffix.lower() not in VIDEO_SUFFIXES and path.exists():
            raise _LineError("malformed entry", f"line {number}: {relative} is neither a frame folder nor a video "
                             f"file ({', '.join(VIDEO_SUFFIXES)})", path)
        count, height, width = probe_video(path)
        indices = list(range(0, count, self.frame_stride))
        return _Item("video", relative, height, width, video_path=str(path), frame_indices=indices,
                     frame_names=[f"{i:05d}" for i in indices])

    # ------------------------------------------------------------------ masks
    def _masks(self, line: dict, item: _Item, number: int) -> tuple[list[RLE | None], bool]:
        frames = len(item.frame_names)
        spec = line.get("mask")
        if spec is None:
            return [None] * frames, False
        value = line.get("mask_value")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise _LineError("malformed entry", f"line {number}: mask_value must be a non-negative integer")
        if item.media == "image":
            return [self._one_mask(spec, item, value, number)], True
        if isinstance(spec, str):
            folder = self._path(self._relative(spec, number))
            if not folder.is_dir():
                raise _LineError("missing annotation file", f"line {number}: mask folder {spec} does not exist", folder)
            masks = []
            for name in item.frame_names:
                png = folder / f"{name}.png"
                masks.append(self._png_mask(png, item, value, number) if png.is_file() else None)
            if all(m is None for m in masks):
                raise _LineError("mask count disagrees with frames",
                                 f"line {number}: no PNG in {spec} is named like a frame (e.g. {item.frame_names[0]}.png)",
                                 folder)
            return masks, True
        if not isinstance(spec, list) or len(spec) != frames:
            got = len(spec) if isinstance(spec, list) else type(spec).__name__
            raise _LineError("mask count disagrees with frames",
                             f"line {number}: a video mask is a folder or a list of {frames} entries, got {got}")
        return [None if entry is None else self._one_mask(entry, item, value, number) for entry in spec], True

    def _one_mask(self, spec: Any, item: _Item, value: int | None, number: int) -> RLE:
        if isinstance(spec, str):
            return self._png_mask(self._path(self._relative(spec, number)), item, value, number)
        try:
            return segmentation_to_rle(spec, item.height, item.width)
        except MaskSizeError as err:
            raise _LineError("mask size disagrees with frame", f"line {number}: {err}") from None
        except (ValueError, TypeError, KeyError) as err:
            raise _LineError("malformed mask RLE", f"line {number}: {err}") from None

    def _png_mask(self, path: Path, item: _Item, value: int | None, number: int) -> RLE:
        if not path.is_file():
            raise _LineError("missing annotation file", f"line {number}: mask {path.name} does not exist", path)
        try:
            with Image.open(path) as image:
                image.load()
                pixels = np.asarray(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise _LineError("truncated or unreadable image", f"line {number}: {err}", path) from None
        if pixels.ndim == 3:
            if value is not None:
                raise _LineError("malformed entry", f"line {number}: mask_value needs a single-channel or palette PNG", path)
            pixels = pixels[..., :3].max(axis=2)  # a colour drawing: any non-black pixel
        if pixels.shape[:2] != (item.height, item.width):
            raise _LineError("mask size disagrees with frame",
                             f"line {number}: mask {list(pixels.shape[:2])}, {item.relative} {[item.height, item.width]}", path)
        mask = pixels == value if value is not None else pixels > 0  # (H, W) bool
        return encode_mask(mask)


def _expressions(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [text for text in (clean_expression(v) for v in values) if text is not None]


def _record(item: _Item, split: str, annotation_path: Path) -> SampleRecord:
    has_truth = all(r.meta["has_mask"] for r in item.referents)
    return SampleRecord(
        source="own_data", split=split, sample_id=item.relative, media=item.media,
        height=item.height, width=item.width, frames=item.frames, referents=item.referents,
        video_path=item.video_path, frame_indices=item.frame_indices,
        meta={"has_ground_truth": has_truth, "annotation_file": str(annotation_path), item.media: item.relative,
              "frame_names": item.frame_names},
    )


def media_folder_name(sample_id: str) -> str:
    """Where a record's outputs go under an output folder: its relative media path when that is
    a plain relative path (it is, unless ``allow_outside_root`` let another through), else a
    name made safe."""
    normal = posixpath.normpath(sample_id)
    if normal.startswith(("/", "../")) or normal in ("..", ".") or os.sep != "/" and os.sep in normal:
        return re.sub(r"[^A-Za-z0-9._-]", "_", normal).strip("._") or "item"
    return normal
