"""ReVOS reader: MeViS-style annotations plus ``type_id`` and the foreground mask dict.

Layout (one folder for all splits, as released)::

    <root>/meta_expressions_<split>_.json   (train, valid; also train_sub)
        {"videos": {vid: {"frames": [...], "height": h, "width": w, "vid_id": int,
                          "expressions": {exp_id: {"exp", "obj_id": [..], "anno_id": [..], "type_id": 0|1|2}}}}}
    <root>/mask_dict.json                   {str(anno_id): [RLE or null per frame]}
    <root>/mask_dict_foreground.json        {vid: {"masks_rle": [RLE per frame], "foreground_ratio": [...]}}
    <root>/JPEGImages/<vid>/<frame>.jpg

As MeViS, plus: ``referent.meta["type_id"]`` (0 referring, 1 reasoning, 2 no target: such an
expression has no ``anno_id`` and its masks are all ``None``, i.e. empty), the record size from the
video's ``height`` / ``width``, and the video's foreground masks (the union of all annotated
objects, used by ReVOS's robustness score R) in ``record.meta["foreground_masks"]``: one RLE per
frame, aligned with ``record.frames``. They belong to the video, not to any referent, hence the
record's meta.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from salma.data.annotation_files import load_json_file, require_mapping
from salma.data.errors import OnBad
from salma.data.mevis import mask_source
from salma.data.record import SampleRecord
from salma.data.video_expressions import VideoEntry, read_expression_videos
from salma.data.formats import register_format, splits_matching

logger = logging.getLogger(__name__)


@register_format(
    "revos", media="video", scoring="revos",
    splits=lambda root, expression_file, **_: splits_matching(root, expression_file),
)
def read_revos(
    root: str | Path,
    split: str,
    *,
    expression_file: str = "meta_expressions_{split}_.json",
    mask_file: str = "mask_dict.json",
    foreground_file: str = "mask_dict_foreground.json",
    image_folder: str = "JPEGImages",
    check_files: bool = True,
    allow_outside_root: bool = False,
    on_bad: OnBad | None = None,
) -> list[SampleRecord]:
    """Read one ReVOS split; ``{split}`` in ``expression_file`` is replaced by the split name."""
    root_dir = Path(root).absolute()
    expressions_path = root_dir / expression_file.format(split=split)
    foreground = _load_foreground(root_dir / foreground_file)
    mismatched: list[str] = []

    def record_meta(video: VideoEntry) -> dict[str, Any]:
        entry = foreground.get(video.video_id)
        if entry is None:
            return {}
        masks = entry.get("masks_rle") if isinstance(entry, dict) else None
        if not isinstance(masks, list) or len(masks) != len(video.frames):
            mismatched.append(video.video_id)
            return {}
        return {"foreground_masks": masks}

    records = read_expression_videos(
        reader="read_revos",
        source="revos",
        root=root,
        split=split,
        expressions_path=expressions_path,
        frames_root=root_dir / image_folder,
        masks=mask_source(root_dir / mask_file),
        on_bad=on_bad,
        check_files=check_files,
        allow_outside_root=allow_outside_root,
        referent_meta=_type_id,
        record_meta=record_meta,
        video_size=_video_size,
    )
    if mismatched:
        logger.warning(
            "%s: %d video(s) have a foreground mask list that does not match their frames "
            "(no foreground masks attached), e.g. %s",
            root_dir / foreground_file,
            len(mismatched),
            mismatched[0],
        )
    return records


def _load_foreground(path: Path) -> dict[str, Any]:
    if not path.exists():
        logger.warning("%s not found: records carry no foreground masks", path)
        return {}
    return require_mapping(load_json_file(path), path)


def _type_id(entry: dict) -> dict[str, Any]:
    return {"type_id": entry["type_id"]} if "type_id" in entry else {}


def _video_size(video: VideoEntry) -> tuple[int, int] | None:
    height, width = video.raw.get("height"), video.raw.get("width")
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        return height, width
    return None
