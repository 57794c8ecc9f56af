"""GLaMM grounded conversation generation (GCG) reader: RefCOCOg-GCG and GranDf layouts.

``layout="refcocog_gcg"`` (``RefCOCOg_GCG_{split}.json``, COCO train2014 images)::

    [{"img_file_name": str, "caption": str, "refs": [{"sentence": phrase, "bbox": [...],
      "segmentation": [[polygon], ...]}, ...]}, ...]
    (entries may also be wrapped as {"<id>": {...}}, as in the files Sa2VA reads)

``layout="grandf"`` (``GranDf_HA_GCG_{split}.json``)::

    [{"file_name": str, "height": h, "width": w, "caption": str,
      "groundings": {phrase: {"token_positives": [start, end], "rle_masks": [RLE, ...]}}}, ...]

Both become one image record with one referent per grounded phrase, in caption order, and one
conversation turn whose answer is the caption with each phrase wrapped the way GLaMM / Sa2VA train
it: ``"<p> phrase </p> [SEG]"``. The o-th ``[SEG]`` of the answer is the o-th referent
(``referent.meta["span"]`` = ``[start, end)`` in ``record.meta["caption"]``). Following GLaMM:
RefCOCOg-GCG captions are lower-cased and each ``sentence`` is located by its first occurrence in
the caption (a phrase that does not occur is left out and counted in
``record.meta["unmatched_phrases"]``); spans that overlap a later span are cut where it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from salma.data.annotation_files import load_json_file, require_list
from salma.data.confinement import confined_or_reported, unpaired_surrogate
from salma.data.decode import probe_image_size
from salma.data.errors import BadRecordError, BadRecordReporter, OnBad
from salma.data.masks import RLE, MaskSizeError, segmentation_to_rle
from salma.data.record import Referent, SampleRecord, Turn
from salma.data.formats import register_format, splits_matching

GcgLayout = Literal["refcocog_gcg", "grandf"]
GCG_QUESTION = (
    "Could you please give me a brief description of the image? "
    "Please respond with interleaved segmentation masks for the corresponding parts of the answer."
)
_DEFAULT_FILES = {"refcocog_gcg": "RefCOCOg_GCG_{split}.json", "grandf": "GranDf_HA_GCG_{split}.json"}


@register_format(
    "gcg", media="conversation",
    splits=lambda root, layout, annotation_file, **_: splits_matching(
        root, annotation_file or _DEFAULT_FILES.get(layout, "")
    ),
)
def read_gcg(
    root: str | Path,
    split: str,
    *,
    layout: GcgLayout = "refcocog_gcg",
    annotation_file: str | None = None,
    image_folder: str | Path = "images",
    allow_outside_root: bool = False,
    on_bad: OnBad | None = None,
) -> list[SampleRecord]:
    if layout not in _DEFAULT_FILES:
        raise ValueError(f"layout must be one of {sorted(_DEFAULT_FILES)}, got {layout!r}")
    root_dir = Path(root).absolute()
    annotation_path = root_dir / (annotation_file or _DEFAULT_FILES[layout]).format(split=split)
    images_dir = (root_dir / image_folder).absolute()
    entries = require_list(load_json_file(annotation_path), annotation_path)
    reporter = BadRecordReporter(on_bad, reader="read_gcg", root=root, split=split)
    records = []
    for index, entry in enumerate(entries):
        if isinstance(entry, dict) and len(entry) == 1:
            (wrapped_id, inner), = entry.items()
            if isinstance(inner, dict):
                entry = {"id": wrapped_id, **inner}
        if not isinstance(entry, dict):
            reporter.report(annotation_path, "malformed entry", sample_id=str(index), detail="not an object")
            continue
        record = _record(entry, index, layout, split, annotation_path, images_dir, reporter, allow_outside_root)
        if record is not None:
            records.append(record)
    reporter.finish()
    return records


def _record(
    entry: dict,
    index: int,
    layout: GcgLayout,
    split: str,
    annotation_path: Path,
    images_dir: Path,
    reporter: BadRecordReporter,
    allow_outside_root: bool,
) -> SampleRecord | None:
    file_name = entry.get("img_file_name" if layout == "refcocog_gcg" else "file_name")
    sample_id = str(entry.get("id", entry.get("image_id", file_name if file_name else index)))
    caption = entry.get("caption")
    if not isinstance(file_name, str) or not isinstance(caption, str):
        reporter.report(annotation_path, "malformed entry", sample_id=sample_id, detail="no image file name or caption")
        return None
    if unpaired_surrogate(caption) is not None:
        reporter.report(annotation_path, "text is not valid Unicode", sample_id=sample_id, detail="caption")
        return None
    path = confined_or_reported(reporter, annotation_path, images_dir, file_name, sample_id=sample_id,
                                allow_outside_root=allow_outside_root)
    if path is None:
        return None
    try:
        height, width = probe_image_size(path, missing_reason="missing image file")
    except BadRecordError as exc:
        reporter.report(exc.path, exc.reason, sample_id=sample_id, detail=exc.detail)
        return None
    caption = caption.strip('"').strip()
    try:
        if layout == "refcocog_gcg":
            caption = caption.lower()
            spans, unmatched = _refcocog_spans(entry, caption, height, width)
        else:
            spans, unmatched = _grandf_spans(entry, caption, height, width)
    except MaskSizeError as exc:
        reporter.report(annotation_path, "mask size disagrees with frame", sample_id=sample_id, detail=str(exc))
        return None
    except (ValueError, KeyError, TypeError) as exc:
        reporter.report(annotation_path, "malformed entry", sample_id=sample_id, detail=repr(exc))
        return None
    spans = _trim_overlaps(sorted(spans, key=lambda s: s[0]), caption)
    if not spans:
        reporter.report(annotation_path, "no usable referents", sample_id=sample_id)
        return None
    referents = [
        Referent(
            ref_id=str(i),
            object_ids=[i],
            expressions=[caption[start:end]],
            masks=[mask],
            meta={"span": [start, end], "mask_file": str(annotation_path)},
        )
        for i, (start, end, mask) in enumerate(spans)
    ]
    return SampleRecord(
        source="gcg",
        split=split,
        sample_id=sample_id,
        media="image",
        height=height,
        width=width,
        frames=[str(path)],
        referents=referents,
        conversation=[Turn(question=GCG_QUESTION, answer=tag_caption(caption, [(s, e) for s, e, _ in spans]))],
        meta={"caption": caption, "layout": layout, "unmatched_phrases": unmatched},
    )


def tag_caption(caption: str, spans: list[tuple[int, int]]) -> str:
    """Wrap each [start, end) span as ``<p> phrase </p> [SEG]`` (spans sorted, disjoint)."""
    out, cursor = [], 0
    for start, end in spans:
        out.append(caption[cursor:start])
        out.append(f"<p> {caption[start:end]} </p> [SEG]")
        cursor = end
    out.append(caption[cursor:])
    return "".join(out)


def _refcocog_spans(entry: dict, caption: str, height: int, width: int) -> tuple[list[tuple[int, int, RLE]], int]:
    spans, unmatched = [], 0
    for ref in entry.get("refs", []):
        phrase = str(ref["sentence"]).lower().strip()
        start = caption.find(phrase) if phrase else -1
        if start < 0:
            unmatched += 1
            continue
        spans.append((start, start + len(phrase), segmentation_to_rle(ref["segmentation"], height, width)))
    return spans, unmatched


def _grandf_spans(entry: dict, caption: str, height: int, width: int) -> tuple[list[tuple[int, int, RLE]], int]:
    spans, unmatched = [], 0
    groundings: dict[str, Any] = entry.get("groundings") or {}
    for grounding in groundings.values():
        if grounding is None:
            unmatched += 1
            continue
        start, end = (int(v) for v in grounding["token_positives"])
        if not 0 <= start < end <= len(caption):
            unmatched += 1
            continue
        spans.append((start, end, segmentation_to_rle(list(grounding["rle_masks"]), height, width)))
    return spans, unmatched


def _trim_overlaps(spans: list[tuple[int, int, RLE]], caption: str) -> list[tuple[int, int, RLE]]:
    """Cut a span that runs into the next one at the next one's start (GLaMM does the same);
    strip whitespace at the span's ends."""
    out = []
    for i, (start, end, mask) in enumerate(spans):
        if i + 1 < len(spans) and end > spans[i + 1][0]:
            end = spans[i + 1][0]
        while start < end and caption[start].isspace():
            start += 1
        while end > start and caption[end - 1].isspace():
            end -= 1
        if end > start:
            out.append((start, end, mask))
    return out
