"""Chat-UniVi video QA reader (its ``video_chat.json``-style instruction data).

Layout::

    <root>/<annotation_file>     a JSON list of {"id", "video": "v_xxx.mp4",
                                 "conversations": [{"from": "human", "value": "<video>\\n..."}, ...]}
    <video_folder>/<video>       default ``<root>``

``annotation_file`` defaults to ``{split}.json``. One record per entry: media ``"video"`` with
``video_path`` set and ``frame_indices`` = every ``frame_stride``-th frame of the video (frame
count and size from the container, probed at index time, which also reports missing or empty
videos). Entries of the same files that carry an ``image`` instead (Chat-UniVi mixes them) become
image records, entries with neither text-only records, exactly as the LLaVA reader makes them.
"""

from __future__ import annotations

from pathlib import Path

from salma.data.annotation_files import load_json_file, require_list
from salma.data.conversation_json import entry_id, image_or_text_record, parse_conversation
from salma.data.confinement import confined_or_reported
from salma.data.decode import probe_video
from salma.data.errors import BadRecordError, BadRecordReporter, OnBad
from salma.data.record import SampleRecord
from salma.data.formats import register_format, splits_matching


@register_format(
    "chatunivi", media="conversation",
    splits=lambda root, annotation_file, **_: splits_matching(root, annotation_file),
)
def read_chatunivi(
    root: str | Path,
    split: str,
    *,
    annotation_file: str = "{split}.json",
    video_folder: str | Path = ".",
    image_folder: str | Path = ".",
    frame_stride: int = 1,
    allow_outside_root: bool = False,
    on_bad: OnBad | None = None,
) -> list[SampleRecord]:
    if frame_stride < 1:
        raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
    root_dir = Path(root).absolute()
    annotation_path = root_dir / annotation_file.format(split=split)
    videos_dir = (root_dir / video_folder).absolute()
    images_dir = (root_dir / image_folder).absolute()
    entries = require_list(load_json_file(annotation_path), annotation_path)
    reporter = BadRecordReporter(on_bad, reader="read_chatunivi", root=root, split=split)
    records = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            reporter.report(annotation_path, "malformed entry", sample_id=str(index), detail="not an object")
            continue
        sample_id = entry_id(entry, index)
        try:
            turns = parse_conversation(entry.get("conversations"))
        except ValueError as exc:
            reporter.report(annotation_path, "malformed entry", sample_id=sample_id, detail=str(exc))
            continue
        video = entry.get("video")
        if video is None:
            record = image_or_text_record(
                entry, index, source="chatunivi", split=split, annotation_path=annotation_path,
                image_folder=images_dir, turns=turns, reporter=reporter,
                allow_outside_root=allow_outside_root,
            )
            if record is not None:
                records.append(record)
            continue
        if not isinstance(video, str) or not video:
            reporter.report(annotation_path, "malformed entry", sample_id=sample_id, detail="'video' is not a path")
            continue
        path = confined_or_reported(reporter, annotation_path, videos_dir, video, sample_id=sample_id,
                                    allow_outside_root=allow_outside_root)
        if path is None:
            continue
        try:
            count, height, width = probe_video(path)
        except BadRecordError as exc:
            reporter.report(exc.path, exc.reason, sample_id=sample_id, detail=exc.detail)
            continue
        records.append(
            SampleRecord(
                source="chatunivi", split=split, sample_id=sample_id, media="video", height=height,
                width=width, conversation=turns, video_path=str(path),
                frame_indices=list(range(0, count, frame_stride)),
                meta={"annotation_file": str(annotation_path)},
            )
        )
    reporter.finish()
    return records
