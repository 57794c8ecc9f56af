"""Shared reading of the ``meta_expressions.json`` family of video formats.

MeViS, ReVOS, Ref-YouTube-VOS and Ref-DAVIS17 (in the ReferFormer layout) all describe a split as
``{"videos": {video_id: {"frames": [names], "expressions": {exp_id: {"exp": str, ...}}}}}`` with
frames at ``<frames_root>/<video_id>/<name>.jpg``; they differ only in where the masks come from
(a ``mask_dict`` keyed by ``anno_id``, palette PNGs, a pickled ``mask_dict``). A ``VideoMaskSource``
hides that difference; ``read_expression_videos`` does the rest: one record per video, one
referent per expression (``exp_id`` as ``ref_id``), bad entries reported and dropped.

Frame order is the order of the JSON ``frames`` list: ``mask_dict`` entries are indexed by
position in that list (MeViS / ReVOS evaluation code reads them that way), so it is not re-sorted.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from salma.data.confinement import plain_name_problem, resolves_inside, unpaired_surrogate
from salma.data.annotation_files import load_json_file, require_mapping
from salma.data.decode import probe_image_size
from salma.data.clutter import CLUTTER_FILE, attach_clutter, load_clutter
from salma.data.distractors import load_distractors
from salma.data.errors import BadRecordError, BadRecordReporter, DatasetFormatError, OnBad
from salma.data.masks import RLE, merge_rles, rle_entry_problem
from salma.data.record import Referent, SampleRecord

FrameMasks = list[RLE | None]


@dataclass
class VideoEntry:
    video_id: str
    frames: list[str]
    expressions: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict)
    # The file names the video more than once / some expression ids more than once. JSON
    # parsers keep the last copy silently; the reader reports and drops them instead.
    duplicated: bool = False
    duplicate_exp_ids: list[str] = field(default_factory=list)


class _KeysSeenTwice(dict):
    """A JSON object that remembers which of its keys the file gave more than once."""

    duplicates: list[str]


def _object_with_duplicates(pairs: list[tuple[str, Any]]) -> _KeysSeenTwice:
    out = _KeysSeenTwice(pairs)
    seen: set[str] = set()
    out.duplicates = [key for key, _ in pairs if key in seen or seen.add(key)]
    return out


class MaskLookupError(Exception):
    """Raised by a ``VideoMaskSource`` for one referent; turned into a bad-record report."""

    def __init__(self, path: str | Path, reason: str, detail: str | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}")


class VideoMaskSource(Protocol):
    path: str  # the file (or folder) the masks come from, for error messages
    has_ground_truth: bool

    def referent_masks(self, video: VideoEntry, exp_id: str, entry: dict) -> tuple[list[int], FrameMasks]:
        """(object ids, one merged mask per frame) of one expression; raises MaskLookupError."""
        ...

    def object_masks(self, video: VideoEntry, object_ids: Sequence[int]) -> FrameMasks:
        """One merged mask per frame of the given objects (distractors); raises MaskLookupError."""
        ...


class NoMaskSource:
    """Splits published without ground truth (MeViS ``valid``, Ref-YouTube-VOS ``valid``)."""

    has_ground_truth = False

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def referent_masks(self, video: VideoEntry, exp_id: str, entry: dict) -> tuple[list[int], FrameMasks]:
        return object_ids_of(entry.get("obj_id", []), self.path), [None] * len(video.frames)

    def object_masks(self, video: VideoEntry, object_ids: Sequence[int]) -> FrameMasks:
        return [None] * len(video.frames)


class AnnoMaskDict:
    """MeViS / ReVOS ``mask_dict.json``: ``{str(anno_id): [RLE or null per frame]}``.

    An expression lists its objects' ``anno_id``s; their masks are merged frame by frame.
    """

    has_ground_truth = True

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._masks = require_mapping(load_json_file(path), path)

    def referent_masks(self, video: VideoEntry, exp_id: str, entry: dict) -> tuple[list[int], FrameMasks]:
        anno_ids = entry.get("anno_id")
        if not isinstance(anno_ids, list):
            raise MaskLookupError(self.path, "malformed entry", "expression has no 'anno_id' list")
        return object_ids_of(entry.get("obj_id", []), self.path), self.object_masks(video, anno_ids)

    def object_masks(self, video: VideoEntry, object_ids: Sequence[int]) -> FrameMasks:
        tracks = []
        for anno_id in object_ids:
            track = self._masks.get(str(anno_id))
            if track is None:
                raise MaskLookupError(self.path, "anno_id missing from mask_dict", f"anno_id {anno_id}")
            if not isinstance(track, list) or len(track) != len(video.frames):
                got = len(track) if isinstance(track, list) else type(track).__name__
                raise MaskLookupError(
                    self.path,
                    "mask count disagrees with frames",
                    f"anno_id {anno_id}: {got} masks for {len(video.frames)} frames",
                )
            check_track(track, self.path, anno_id)
            tracks.append(track)
        return merge_tracks(tracks, len(video.frames))


def check_track(track: list, path: str, anno_id: Any) -> None:
    """Every entry of a ``mask_dict`` track must be null or an RLE object (an int or an RLE
    without ``counts`` would crash the merge); MaskLookupError naming the first that is not."""
    for t, entry in enumerate(track):
        problem = rle_entry_problem(entry)
        if problem is not None:
            raise MaskLookupError(path, "malformed mask RLE", f"anno_id {anno_id}, frame {t}: {problem}")


def merge_tracks(tracks: Sequence[Sequence[RLE | None]], num_frames: int) -> FrameMasks:
    """Frame-by-frame union of several objects' masks; ``None`` where none is present."""
    merged: FrameMasks = []
    for t in range(num_frames):
        present = [track[t] for track in tracks if track[t] is not None]
        merged.append(merge_rles(present) if present else None)
    return merged


def load_meta_expressions(path: str | Path) -> list[VideoEntry]:
    """Parse a ``meta_expressions*.json``; structural problems raise DatasetFormatError. Video
    ids and expression ids given twice are marked on the entries (``duplicated``,
    ``duplicate_exp_ids``) for the reader to report."""
    path = Path(path)
    load_json_file(path)  # the file-level errors (missing, not JSON), worded as everywhere
    with path.open("rb") as f:
        videos = require_mapping(json.load(f, object_pairs_hook=_object_with_duplicates), path, key="videos")
    repeated = set(getattr(videos, "duplicates", ()))
    entries = []
    for video_id, raw in videos.items():
        if not isinstance(raw, dict):
            raise DatasetFormatError(path, f"video {video_id!r} is not an object")
        frames = raw.get("frames", [])
        expressions = raw.get("expressions", {})
        if not isinstance(frames, list) or not isinstance(expressions, dict):
            raise DatasetFormatError(path, f"video {video_id!r}: 'frames' must be a list, 'expressions' an object")
        entries.append(VideoEntry(
            str(video_id), [str(f) for f in frames], expressions, raw, duplicated=video_id in repeated,
            duplicate_exp_ids=sorted(set(getattr(expressions, "duplicates", ()))),
        ))
    return entries


# Longest expression a reader accepts, in characters: a sanity bound far above real referring
# expressions (tens of words; Ref-SAV's long descriptions a few hundred). The exact limit is the
# model's context, checked on the tokenized sample (``salma.data.sampling``); this bound stops a
# runaway text (a whole document pasted into one field) before it is tokenized at all.
MAX_EXPRESSION_CHARS = 4000


def expression_problem(text: Any) -> str | None:
    """The bad-record reason of an unusable expression, or None when it can be used.

    Not text, empty, or only whitespace / zero-width and other invisible format characters
    (``\u200b``, ``\ufeff``): ``"empty expression"``; an unpaired surrogate (``"\udcff"``, which JSON
    allows and no tokenizer encodes): ``"text is not valid Unicode"``; more than
    ``MAX_EXPRESSION_CHARS`` characters after whitespace is collapsed: ``"expression too long"``."""
    if not isinstance(text, str):
        return "empty expression"
    if unpaired_surrogate(text) is not None:
        return "text is not valid Unicode"
    if all(c.isspace() or unicodedata.category(c) in ("Cf", "Cc") for c in text):
        return "empty expression"
    if len(" ".join(text.split())) > MAX_EXPRESSION_CHARS:
        return "expression too long"
    return None


def clean_expression(text: Any) -> str | None:
    """The expression with whitespace collapsed; None when ``expression_problem`` finds one."""
    if expression_problem(text) is not None:
        return None
    return " ".join(text.split())


def frame_folder_problem(folder: Path, names: Sequence[str], ext: str) -> str | None:
    """Why the listed frames do not match the folder, or None when they all exist."""
    try:
        present = set(os.listdir(folder))
    except FileNotFoundError:
        return "frame folder does not exist"
    except NotADirectoryError:
        return "frame folder is not a directory"
    except OSError as err:  # a symlink loop (ELOOP), no permission, ...
        return f"frame folder cannot be listed: {err.strerror or err}"
    missing = [n for n in names if f"{n}{ext}" not in present]
    if missing:
        return f"{len(missing)} of {len(names)} listed frames are not in the folder (first: {missing[0]}{ext})"
    return None


def read_expression_videos(
    *,
    reader: str,
    source: str,
    root: str | Path,
    split: str,
    expressions_path: Path,
    frames_root: Path,
    masks: VideoMaskSource,
    on_bad: OnBad | None,
    check_files: bool,
    allow_outside_root: bool = False,
    frame_ext: str = ".jpg",
    referent_meta: Callable[[dict], dict] | None = None,
    record_meta: Callable[[VideoEntry], dict] | None = None,
    video_size: Callable[[VideoEntry], tuple[int, int] | None] | None = None,
) -> list[SampleRecord]:
    """One record per video of ``expressions_path``; see the module docstring."""
    reporter = BadRecordReporter(on_bad, reader=reader, root=root, split=split)
    videos = load_meta_expressions(expressions_path)
    distractors = load_distractors(expressions_path.parent)
    records = []
    for video in videos:
        record = _video_record(
            video,
            source=source,
            split=split,
            expressions_path=expressions_path,
            frames_root=frames_root,
            masks=masks,
            distractors=distractors,
            reporter=reporter,
            check_files=check_files,
            allow_outside_root=allow_outside_root,
            frame_ext=frame_ext,
            referent_meta=referent_meta,
            record_meta=record_meta,
            video_size=video_size,
        )
        if record is not None:
            records.append(record)
    reporter.finish()
    clutter_folder = expressions_path.parent
    attach_clutter(records, load_clutter(clutter_folder), clutter_folder / CLUTTER_FILE, video=True)
    return records


def _video_record(
    video: VideoEntry,
    *,
    source: str,
    split: str,
    expressions_path: Path,
    frames_root: Path,
    masks: VideoMaskSource,
    distractors: dict[str, list[int]],
    reporter: BadRecordReporter,
    check_files: bool,
    allow_outside_root: bool,
    frame_ext: str,
    referent_meta: Callable[[dict], dict] | None,
    record_meta: Callable[[VideoEntry], dict] | None,
    video_size: Callable[[VideoEntry], tuple[int, int] | None] | None,
) -> SampleRecord | None:
    vid = video.video_id
    problem = _video_entry_problem(video)
    if problem is not None:
        reason, detail = problem
        reporter.report(expressions_path, reason, sample_id=vid, detail=detail)
        return None
    folder = frames_root / vid
    if not allow_outside_root and not resolves_inside(folder, frames_root):
        reporter.report(folder, "path outside the dataset root", sample_id=vid,
                        detail=f"the frame folder resolves outside {frames_root} (or is a symlink loop)")
        return None
    if check_files:
        problem_text = frame_folder_problem(folder, video.frames, frame_ext)
        if problem_text is not None:
            reporter.report(folder, "frame list disagrees with folder", sample_id=vid, detail=problem_text)
            return None
    frames = [str(folder / f"{name}{frame_ext}") for name in video.frames]
    size = video_size(video) if video_size is not None else None
    if size is None:
        try:
            size = probe_image_size(frames[0])
        except BadRecordError as exc:
            reporter.report(exc.path, exc.reason, sample_id=vid, detail=exc.detail)
            return None
    height, width = size

    referents = []
    for exp_id, entry in video.expressions.items():
        key = f"{vid}/{exp_id}"
        exp_problem = plain_name_problem(exp_id)
        if exp_problem is not None or exp_id in video.duplicate_exp_ids:
            reason = "id is not a plain name" if exp_problem is not None else "duplicate id"
            detail = exp_problem or f"exp_id {exp_id!r} is given twice"
            reporter.report(expressions_path, reason, sample_id=key, detail=detail)
            continue
        referent = _referent(
            video, str(exp_id), entry, key, expressions_path, masks, distractors, reporter, (height, width)
        )
        if referent is not None:
            if referent_meta is not None:
                referent.meta.update(referent_meta(entry))
            referents.append(referent)
    if not referents:
        reporter.report(expressions_path, "no usable referents", sample_id=vid)
        return None
    meta: dict[str, Any] = {"has_ground_truth": masks.has_ground_truth}
    if record_meta is not None:
        meta.update(record_meta(video))
    return SampleRecord(
        source=source,
        split=split,
        sample_id=vid,
        media="video",
        height=height,
        width=width,
        frames=frames,
        referents=referents,
        meta=meta,
    )


def _video_entry_problem(video: VideoEntry) -> tuple[str, str | None] | None:
    """(reason, detail) when the video entry itself is unusable: no frames, an id or a frame
    name that is not a plain file name (they become paths), a video or a frame given twice."""
    if not video.frames:
        return "video has no frames", None
    if video.duplicated:
        return "duplicate id", f"video id {video.video_id!r} is given twice"
    for name in [video.video_id, *video.frames]:
        problem = plain_name_problem(name)
        if problem is not None:
            return "id is not a plain name", problem
    if len(set(video.frames)) != len(video.frames):
        twice = next(f for f in video.frames if video.frames.count(f) > 1)
        return "duplicate id", f"frame {twice!r} is listed twice (frames and masks would misalign)"
    return None


def _referent(
    video: VideoEntry,
    exp_id: str,
    entry: Any,
    key: str,
    expressions_path: Path,
    masks: VideoMaskSource,
    distractors: dict[str, list[int]],
    reporter: BadRecordReporter,
    size: tuple[int, int],
) -> Referent | None:
    if not isinstance(entry, dict) or "exp" not in entry:
        reporter.report(expressions_path, "malformed entry", sample_id=key, detail="expression without 'exp'")
        return None
    text = clean_expression(entry["exp"])
    if text is None:
        reporter.report(expressions_path, expression_problem(entry["exp"]) or "empty expression", sample_id=key)
        return None
    try:
        object_ids, frame_masks = masks.referent_masks(video, exp_id, entry)
        distractor_ids = distractors.get(key)
        distractor_masks = masks.object_masks(video, distractor_ids) if distractor_ids is not None else None
    except MaskLookupError as exc:
        reporter.report(exc.path, exc.reason, sample_id=key, detail=exc.detail)
        return None
    for masks_list in (frame_masks, distractor_masks or []):
        mismatch = _size_mismatch(masks_list, size)
        if mismatch is not None:
            reporter.report(masks.path, "mask size disagrees with frame", sample_id=key, detail=mismatch)
            return None
    meta: dict[str, Any] = {"mask_file": masks.path}
    if "anno_id" in entry:
        anno_ids = entry["anno_id"]
        meta["anno_ids"] = list(anno_ids) if isinstance(anno_ids, list) else [anno_ids]
    if distractor_ids is not None:
        meta["distractor_ids"] = distractor_ids
        meta["distractor_masks"] = distractor_masks
    return Referent(ref_id=exp_id, object_ids=object_ids, expressions=[text], masks=frame_masks, meta=meta)


def _size_mismatch(frame_masks: Sequence[RLE | None], size: tuple[int, int]) -> str | None:
    for t, rle in enumerate(frame_masks):
        if rle is not None and [int(s) for s in rle["size"]] != list(size):
            return f"frame {t}: mask size {list(rle['size'])}, frame size {list(size)}"
    return None


def object_ids_of(raw: Any, path: str) -> list[int]:
    """``obj_id`` is a list of ints (MeViS, ReVOS) or one id as a string (Ref-YouTube-VOS)."""
    items = raw if isinstance(raw, list) else [raw]
    try:
        return [int(item) for item in items]
    except (TypeError, ValueError) as exc:
        raise MaskLookupError(path, "malformed entry", f"obj_id {raw!r} is not an id") from exc
