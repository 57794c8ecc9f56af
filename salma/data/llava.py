"""LLaVA-665K-style VQA reader (``llava_v1_5_mix665k.json`` and anything in that format).

Layout::

    <root>/<annotation_file>     a JSON list of {"id", "image"?: "coco/train2017/x.jpg",
                                 "conversations": [{"from": "human", "value": "<image>\\n..."}, ...]}
    <image_folder>/<image>       default ``<root>``

``annotation_file`` defaults to ``{split}.json`` (``{split}`` is replaced); for the real LLaVA-665K
pass ``annotation_file="llava_v1_5_mix665k.json"``. One record per entry with its turns in
``conversation`` and no referents; an entry without ``image`` is text-only (media ``"none"``,
size 0 x 0). Image sizes are read from the file headers, which also reports missing images at
index time. See ``salma.data.conversation_json`` for how conversations are parsed.
"""

from __future__ import annotations

from pathlib import Path

from salma.data.annotation_files import load_json_file, require_list
from salma.data.conversation_json import entry_id, image_or_text_record, parse_conversation
from salma.data.errors import BadRecordReporter, OnBad
from salma.data.record import SampleRecord
from salma.data.formats import register_format, splits_matching


@register_format(
    "llava", media="conversation",
    splits=lambda root, annotation_file, **_: splits_matching(root, annotation_file),
)
def read_llava(
    root: str | Path,
    split: str,
    *,
    annotation_file: str = "{split}.json",
    image_folder: str | Path = ".",
    allow_outside_root: bool = False,
    on_bad: OnBad | None = None,
) -> list[SampleRecord]:
    root_dir = Path(root).absolute()
    annotation_path = root_dir / annotation_file.format(split=split)
    images_dir = (root_dir / image_folder).absolute()
    entries = require_list(load_json_file(annotation_path), annotation_path)
    reporter = BadRecordReporter(on_bad, reader="read_llava", root=root, split=split)
    records = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            reporter.report(annotation_path, "malformed entry", sample_id=str(index), detail="not an object")
            continue
        try:
            turns = parse_conversation(entry.get("conversations"))
        except ValueError as exc:
            reporter.report(annotation_path, "malformed entry", sample_id=entry_id(entry, index), detail=str(exc))
            continue
        record = image_or_text_record(
            entry, index, source="llava", split=split, annotation_path=annotation_path,
            image_folder=images_dir, turns=turns, reporter=reporter,
                allow_outside_root=allow_outside_root,
        )
        if record is not None:
            records.append(record)
    reporter.finish()
    return records
