"""MeViS reader: ``meta_expressions.json`` + ``mask_dict.json`` + ``JPEGImages/``.

Layout (one folder per split, as released)::

    <root>/<split>/meta_expressions.json   {"videos": {vid: {"frames": [...],
                                             "expressions": {exp_id: {"exp", "obj_id": [..], "anno_id": [..]}}}}}
    <root>/<split>/mask_dict.json          {str(anno_id): [RLE or null per frame]}   (train, valid_u)
    <root>/<split>/JPEGImages/<vid>/<frame>.jpg

One record per video, one referent per expression: ``ref_id`` is the ``exp_id``, ``object_ids``
the expression's ``obj_id`` list, and the masks of its ``anno_id``s are merged frame by frame
(``null`` = object absent on that frame). A split without ``mask_dict.json`` (MeViS ``valid``,
whose ground truth is withheld) gives referents whose masks are all ``None`` and
``record.meta["has_ground_truth"] = False``. Splits are folder names: ``train``, ``valid_u``,
``valid``, or the synthetic ``drift``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from salma.data.errors import OnBad
from salma.data.record import SampleRecord
from salma.data.video_expressions import AnnoMaskDict, NoMaskSource, VideoMaskSource, read_expression_videos
from salma.data.formats import register_format, splits_matching

logger = logging.getLogger(__name__)


@register_format(
    "mevis", media="video", scoring="video",
    splits=lambda root, expression_file, **_: splits_matching(root, "{split}/" + expression_file),
)
def read_mevis(
    root: str | Path,
    split: str,
    *,
    expression_file: str = "meta_expressions.json",
    mask_file: str = "mask_dict.json",
    image_folder: str = "JPEGImages",
    check_files: bool = True,
    allow_outside_root: bool = False,
    on_bad: OnBad | None = None,
) -> list[SampleRecord]:
    """Read one MeViS split. ``check_files`` lists each video folder once to catch missing frames."""
    split_dir = Path(root).absolute() / split
    return read_expression_videos(
        reader="read_mevis",
        source="mevis",
        root=root,
        split=split,
        expressions_path=split_dir / expression_file,
        frames_root=split_dir / image_folder,
        masks=mask_source(split_dir / mask_file),
        on_bad=on_bad,
        check_files=check_files,
        allow_outside_root=allow_outside_root,
    )


def mask_source(path: Path) -> VideoMaskSource:
    """The split's ``mask_dict.json``, or no ground truth when the split has none."""
    if path.exists():
        return AnnoMaskDict(path)
    if path.parent.is_dir():  # else the split itself is missing, which reading its expressions reports
        logger.warning("%s not found: the split has no ground-truth masks", path)
    return NoMaskSource(path)
