"""LLaVA-style conversation entries, shared by the LLaVA-665K and Chat-UniVi readers.

An entry is ``{"id", "image"?: str, "video"?: str, "conversations": [{"from": "human"|"gpt",
"value": str}, ...]}``. Conversations become ``Turn(question, answer)`` pairs: a leading ``gpt``
message is skipped (as LLaVA's preprocessing does), roles must then alternate, and a final
question without an answer is dropped. The media placeholders ``<image>`` and ``<video>`` are
removed from the text: the pipeline inserts its own image tokens where its chat template wants
them. A question may be empty after that (plain captioning); an answer may not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from salma.data.confinement import confined_or_reported, unpaired_surrogate
from salma.data.decode import probe_image_size
from salma.data.errors import BadRecordError, BadRecordReporter
from salma.data.record import SampleRecord, Turn

MEDIA_PLACEHOLDERS = ("<image>", "<video>")
_HUMAN = ("human", "user")
_ASSISTANT = ("gpt", "assistant")


def parse_conversation(messages: Any) -> list[Turn]:
    """Question/answer turns of a LLaVA ``conversations`` list; ValueError when malformed."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'conversations' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("value"), str) or m.get("from") not in _HUMAN + _ASSISTANT:
            raise ValueError(f"a message must have 'from' (human/gpt) and a string 'value': {m!r:.120}")
        if unpaired_surrogate(m["value"]) is not None:
            # JSON admits "\udcff"; the tokenizer cannot encode it and would fail mid-job.
            raise ValueError(f"message {i} is not valid Unicode (an unpaired surrogate)")
    start = 0
    while start < len(messages) and messages[start]["from"] in _ASSISTANT:
        start += 1
    turns = []
    for i in range(start, len(messages) - 1, 2):
        question, answer = messages[i], messages[i + 1]
        if question["from"] not in _HUMAN or answer["from"] not in _ASSISTANT:
            raise ValueError(f"roles do not alternate human/gpt at message {i}")
        answer_text = strip_placeholders(answer["value"])
        if not answer_text:
            raise ValueError(f"empty answer at message {i + 1}")
        turns.append(Turn(question=strip_placeholders(question["value"]), answer=answer_text))
    if not turns:
        raise ValueError("no question/answer pair")
    return turns


def strip_placeholders(text: str) -> str:
    for token in MEDIA_PLACEHOLDERS:
        text = text.replace(token, "")
    return text.strip()


def entry_id(entry: dict, index: int) -> str:
    return str(entry.get("id", index))


def image_or_text_record(
    entry: dict,
    index: int,
    *,
    source: str,
    split: str,
    annotation_path: Path,
    image_folder: Path,
    turns: list[Turn],
    reporter: BadRecordReporter,
    allow_outside_root: bool = False,
) -> SampleRecord | None:
    """A record for an entry with one ``image`` (media "image") or none (media "none"). The
    image path must stay inside ``image_folder`` (``salma.data.confinement``)."""
    sample_id = entry_id(entry, index)
    image = entry.get("image")
    if image is None:
        return SampleRecord(
            source=source, split=split, sample_id=sample_id, media="none", height=0, width=0,
            conversation=turns, meta={"annotation_file": str(annotation_path)},
        )
    if isinstance(image, list):
        if len(image) != 1:
            reporter.report(annotation_path, "unsupported sample", sample_id=sample_id, detail=f"{len(image)} images")
            return None
        image = image[0]
    if not isinstance(image, str) or not image:
        reporter.report(annotation_path, "malformed entry", sample_id=sample_id, detail="'image' is not a path")
        return None
    path = confined_or_reported(reporter, annotation_path, image_folder, image, sample_id=sample_id,
                                allow_outside_root=allow_outside_root)
    if path is None:
        return None
    try:
        height, width = probe_image_size(path, missing_reason="missing image file")
    except BadRecordError as exc:
        reporter.report(exc.path, exc.reason, sample_id=sample_id, detail=exc.detail)
        return None
    return SampleRecord(
        source=source, split=split, sample_id=sample_id, media="image", height=height, width=width,
        frames=[str(path)], conversation=turns, meta={"annotation_file": str(annotation_path)},
    )
