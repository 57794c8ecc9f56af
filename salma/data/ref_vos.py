"""Ref-YouTube-VOS and Ref-DAVIS17 readers (the ReferFormer layout).

Layout::

    <root>/meta_expressions/<split>/meta_expressions.json
        {"videos": {vid: {"frames": [...], "expressions": {exp_id: {"exp": str, "obj_id": "1"}}}}}
    <root>/<split>/JPEGImages/<vid>/<frame>.jpg
    <root>/<split>/Annotations/<vid>/<frame>.png    palette PNG, pixel value = object id (0 = background)
    <root>/<split>/mask_dict.pkl                    optional, the Sa2VA / VISA pre-encoded masks

One record per video, one referent per expression (``exp_id`` as ``ref_id``, the expression's
single ``obj_id`` as ``object_ids``). Masks come from (``masks`` option):

- ``"png"``: the palette PNGs, one object id per object; an object absent on a frame is ``None``,
  and an object absent on every frame has an all-empty mask (ReferFormer's loader: its
  expressions are scored against empty ground truth, not dropped).
- ``"mask_dict"``: ``mask_dict.pkl`` = ``{str(anno_id): [RLE or None per frame]}``, where the
  ``anno_id`` of an expression is its position in a count over the videos in sorted order and,
  within a video, the expression ids in sorted (string) order - the convention of the VISA and
  Sa2VA loaders that produced these files.
- ``"none"``: no ground truth (Ref-YouTube-VOS ``valid`` withholds it).
- ``"auto"`` (default): ``mask_dict`` when the file exists, else ``png`` when the split has an
  ``Annotations`` folder, else ``none``.

``mask_dict.pkl`` is a pickle: it is read through the restricted unpickler of
``salma.data.annotation_files`` (builtin containers and scalars only; anything else is a
``DatasetFormatError`` naming the file), so a poisoned file cannot run code.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from salma.data.annotation_files import load_pickle_file, require_mapping
from salma.data.errors import OnBad
from salma.data.formats import register_format, splits_matching
from salma.data.masks import RLE, encode_mask, stored_rle
from salma.data.record import SampleRecord
from salma.data.video_expressions import (
    FrameMasks,
    MaskLookupError,
    NoMaskSource,
    VideoEntry,
    VideoMaskSource,
    check_track,
    load_meta_expressions,
    merge_tracks,
    object_ids_of,
    read_expression_videos,
)

logger = logging.getLogger(__name__)

MaskSourceName = Literal["auto", "png", "mask_dict", "none"]
SPLIT_EXPRESSIONS = "meta_expressions/{split}/meta_expressions.json"  # relative to the dataset root


@register_format(
    "ref_youtube_vos", media="video", scoring="video", splits=lambda root, **_: splits_matching(root, SPLIT_EXPRESSIONS)
)
def read_ref_youtube_vos(
    root: str | Path,
    split: str,
    *,
    masks: MaskSourceName = "auto",
    mask_dict_file: str = "{split}/mask_dict.pkl",
    check_files: bool = True,
    allow_outside_root: bool = False,
    on_bad: OnBad | None = None,
) -> list[SampleRecord]:
    """Read one Ref-YouTube-VOS split (``train``, ``valid``)."""
    return _read_ref_vos("ref_youtube_vos", root, split, masks, mask_dict_file, check_files, allow_outside_root, on_bad)


@register_format(
    "ref_davis17", media="video", scoring="video", splits=lambda root, **_: splits_matching(root, SPLIT_EXPRESSIONS)
)
def read_ref_davis17(
    root: str | Path,
    split: str,
    *,
    masks: MaskSourceName = "auto",
    mask_dict_file: str = "{split}/mask_dict.pkl",
    check_files: bool = True,
    allow_outside_root: bool = False,
    on_bad: OnBad | None = None,
) -> list[SampleRecord]:
    """Read one Ref-DAVIS17 split (``train``, ``valid``) converted to the ReferFormer layout."""
    return _read_ref_vos("ref_davis17", root, split, masks, mask_dict_file, check_files, allow_outside_root, on_bad)


def _read_ref_vos(
    source: str,
    root: str | Path,
    split: str,
    masks: MaskSourceName,
    mask_dict_file: str,
    check_files: bool,
    allow_outside_root: bool,
    on_bad: OnBad | None,
) -> list[SampleRecord]:
    root_dir = Path(root).absolute()
    expressions_path = root_dir / SPLIT_EXPRESSIONS.format(split=split)
    split_dir = root_dir / split
    mask_dict_path = root_dir / mask_dict_file.format(split=split)
    annotations_dir = split_dir / "Annotations"
    if masks == "auto":
        if mask_dict_path.exists():
            masks = "mask_dict"
        elif annotations_dir.is_dir():
            masks = "png"
        else:
            masks = "none"
    source_of_masks: VideoMaskSource
    match masks:
        case "png":
            source_of_masks = PaletteAnnotations(annotations_dir)
        case "mask_dict":
            source_of_masks = PickledMaskDict(mask_dict_path, load_meta_expressions(expressions_path))
        case "none":
            source_of_masks = NoMaskSource(annotations_dir)
        case _:
            raise ValueError(f"masks must be 'auto', 'png', 'mask_dict' or 'none', got {masks!r}")
    return read_expression_videos(
        reader=f"read_{source}",
        source=source,
        root=root,
        split=split,
        expressions_path=expressions_path,
        frames_root=split_dir / "JPEGImages",
        masks=source_of_masks,
        on_bad=on_bad,
        check_files=check_files,
        allow_outside_root=allow_outside_root,
    )


class PaletteAnnotations:
    """Masks from ``Annotations/<vid>/<frame>.png`` (one palette index per object)."""

    has_ground_truth = True

    def __init__(self, folder: Path) -> None:
        self.path = str(folder)
        self._folder = folder
        self._cached_video: str | None = None
        self._cached_tracks: dict[int, FrameMasks] = {}

    def referent_masks(self, video: VideoEntry, exp_id: str, entry: dict) -> tuple[list[int], FrameMasks]:
        object_ids = object_ids_of(entry.get("obj_id"), self.path)
        return object_ids, self.object_masks(video, object_ids)

    def object_masks(self, video: VideoEntry, object_ids: list[int] | tuple[int, ...]) -> FrameMasks:
        tracks = self._video_tracks(video)
        absent = [i for i in object_ids if i not in tracks]
        if absent:
            # An object on none of the PNGs has an empty mask on every frame, as ReferFormer's
            # Ref-YouTube-VOS loader builds it (``(mask == obj_id)`` per frame): its expressions
            # are scored against all-empty ground truth, not dropped.
            logger.info("%s: object id(s) %s on none of the %d annotation PNGs: empty ground truth",
                        self._folder / video.video_id, absent, len(video.frames))  # fmt: skip
        empty: FrameMasks = [None] * len(video.frames)
        return merge_tracks([tracks.get(i, empty) for i in object_ids], len(video.frames))

    def _video_tracks(self, video: VideoEntry) -> dict[int, FrameMasks]:
        """{object id: one mask per frame}; each PNG is decoded once per video."""
        if self._cached_video == video.video_id:
            return self._cached_tracks
        num_frames = len(video.frames)
        tracks: dict[int, FrameMasks] = {}
        for t, name in enumerate(video.frames):
            ids = self._read_ids(self._folder / video.video_id / f"{name}.png")
            for object_id in np.unique(ids):
                if object_id == 0:
                    continue
                track = tracks.setdefault(int(object_id), [None] * num_frames)
                track[t] = encode_mask(ids == object_id)
        self._cached_video, self._cached_tracks = video.video_id, tracks
        return tracks

    @staticmethod
    def _read_ids(path: Path) -> np.ndarray:
        if not path.is_file():
            raise MaskLookupError(path, "missing frame file", "annotation PNG")
        try:
            with Image.open(path) as image:
                if image.mode not in ("P", "L"):
                    raise MaskLookupError(
                        path, "truncated or unreadable image", f"expected a palette PNG, got mode {image.mode}"
                    )
                return np.asarray(image)
        except (OSError, SyntaxError, ValueError) as exc:
            raise MaskLookupError(path, "truncated or unreadable image", str(exc)) from exc


class PickledMaskDict:
    """Masks from a pickled ``mask_dict.pkl`` keyed by the expression counter (see module doc)."""

    has_ground_truth = True

    def __init__(self, path: Path, videos: list[VideoEntry]) -> None:
        self.path = str(path)
        self._masks = require_mapping(load_pickle_file(path), path)
        self._anno_of_expression: dict[tuple[str, str], str] = {}
        self._anno_of_object: dict[tuple[str, int], str] = {}
        counter = 0
        for video in sorted(videos, key=lambda v: v.video_id):
            for exp_id in sorted(video.expressions):
                anno_id = str(counter)
                counter += 1
                self._anno_of_expression[(video.video_id, exp_id)] = anno_id
                entry = video.expressions[exp_id]
                if isinstance(entry, dict):
                    try:
                        object_id = int(entry.get("obj_id"))
                    except (TypeError, ValueError):
                        continue  # reported as malformed when the expression itself is read
                    self._anno_of_object.setdefault((video.video_id, object_id), anno_id)

    def referent_masks(self, video: VideoEntry, exp_id: str, entry: dict) -> tuple[list[int], FrameMasks]:
        object_ids = object_ids_of(entry.get("obj_id"), self.path)
        return object_ids, self._track(video, self._anno_of_expression[(video.video_id, exp_id)])

    def object_masks(self, video: VideoEntry, object_ids: list[int] | tuple[int, ...]) -> FrameMasks:
        tracks = []
        for object_id in object_ids:
            anno_id = self._anno_of_object.get((video.video_id, object_id))
            if anno_id is None:
                raise MaskLookupError(self.path, "object missing from annotations", f"object id {object_id}")
            tracks.append(self._track(video, anno_id))
        return merge_tracks(tracks, len(video.frames))

    def _track(self, video: VideoEntry, anno_id: str) -> list[RLE | None]:
        track = self._masks.get(anno_id)
        if track is None:
            raise MaskLookupError(self.path, "anno_id missing from mask_dict", f"anno_id {anno_id}")
        if not isinstance(track, list) or len(track) != len(video.frames):
            got = len(track) if isinstance(track, list) else type(track).__name__
            raise MaskLookupError(
                self.path, "mask count disagrees with frames", f"anno_id {anno_id}: {got} for {len(video.frames)}"
            )
        check_track(track, self.path, anno_id)
        return [None if rle is None else stored_rle(rle) for rle in track]
