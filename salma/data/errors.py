"""Errors raised by the dataset readers and decoders, and how bad records are reported.

Two kinds of failure, handled differently:

- ``DatasetFormatError``: a top-level file (``instances.json``, ``meta_expressions.json``,
  ``mask_dict.json``, a refs pickle, ...) is missing, cannot be parsed, or has the wrong
  structure. Nothing of the split can be trusted, so readers raise it at once (fail fast); the
  message names the path and the parse error.
- ``BadRecordError``: one record (or one referent / expression of a record) is unusable: an
  ``anno_id`` missing from ``mask_dict``, an empty expression, a truncated JPEG, a missing frame,
  an RLE whose size disagrees with the frame. ``reason`` is a short fixed phrase (one of
  ``BAD_REASONS``) so that callers can count per (file, reason); ``detail`` carries the specifics.

How readers report bad records
------------------------------
Every reader takes ``on_bad: OnBad | None``. For each unusable unit the reader builds a
``BadRecordError`` and drops the smallest unit that is unusable: an expression (an empty sentence
among a RefCOCO ref's sentences), a referent (an expression whose ``anno_id`` is missing), or the
whole record (a video with no frames); a record left with no referent at all is dropped and
reported once more with reason ``"no usable referents"``. Then:

- ``on_bad=None`` (default): the errors are counted and, at the end of the read, one warning is
  logged with the count per reason (``BadRecordReporter.finish``).
- ``on_bad=callable``: it is called with each error (count it, collect it, or raise it:
  ``raise_bad_record`` turns every bad record into an exception, handy in tests).

The decoders (``salma.data.decode``) raise ``BadRecordError`` directly; the Ray Data pipeline
catches it per record, counts it per file and reason, and stops the job when the bad fraction
passes its threshold.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

# The fixed vocabulary of reasons; a reason not in this tuple is a programming error.
BAD_REASONS: Final[tuple[str, ...]] = (
    "empty expression",
    "anno_id missing from mask_dict",
    "object missing from annotations",
    "malformed entry",
    "malformed mask RLE",
    "mask size disagrees with frame",
    "mask count disagrees with frames",
    "missing image file",
    "missing frame file",
    "missing video file",
    "missing annotation file",
    "truncated or unreadable image",
    "unreadable video",
    "video has no frames",
    "frame index past the end of the video",
    "frame list disagrees with folder",
    "frame size disagrees with record",
    "unsupported sample",
    "no usable referents",
    "text is not valid Unicode",
    "expression too long",
    "sequence longer than the model context",
    "path outside the dataset root",
    "id is not a plain name",
    "duplicate id",
    "malformed polygon",
    "mask is empty",
    "invalid image size",
)


class DatasetFormatError(Exception):
    """A top-level annotation file is missing, unparsable or has the wrong structure."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem))


class BadRecordError(Exception):
    """One record (or one referent of it) cannot be used.

    ``path`` is the file at fault (the image, the frame, the annotation file holding the broken
    entry); ``reason`` one of ``BAD_REASONS``; ``sample_id`` the record (``"<video>"``) or the
    referent (``"<video>/<exp_id>"``) concerned, where known; ``detail`` free text.
    """

    def __init__(
        self,
        path: str | Path,
        reason: str,
        *,
        sample_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        if reason not in BAD_REASONS:
            raise ValueError(f"unknown bad-record reason {reason!r}; add it to BAD_REASONS")
        self.path = str(path)
        self.reason = reason
        self.sample_id = sample_id
        self.detail = detail
        text = f"{self.path}: {reason}"
        if sample_id is not None:
            text += f" [{sample_id}]"
        if detail:
            text += f" ({detail})"
        super().__init__(text)

    def __reduce__(self):
        # Keyword arguments do not survive the default Exception pickling; Ray ships these
        # errors between processes.
        return (_rebuild_bad_record, (self.path, self.reason, self.sample_id, self.detail))


def _rebuild_bad_record(path, reason, sample_id, detail) -> BadRecordError:
    return BadRecordError(path, reason, sample_id=sample_id, detail=detail)


OnBad = Callable[[BadRecordError], None]


def raise_bad_record(error: BadRecordError) -> None:
    """An ``on_bad`` that turns every bad record into an exception (strict reading)."""
    raise error


class BadRecordReporter:
    """Used inside a reader: forwards each bad record to ``on_bad`` and keeps the counts."""

    def __init__(self, on_bad: OnBad | None, *, reader: str, root: str | Path, split: str) -> None:
        self._on_bad = on_bad
        self._what = f"{reader}({str(root)!r}, split={split!r})"
        self.reasons: Counter[str] = Counter()

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def report(
        self,
        path: str | Path,
        reason: str,
        *,
        sample_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        error = BadRecordError(path, reason, sample_id=sample_id, detail=detail)
        self.reasons[reason] += 1
        if self._on_bad is not None:
            self._on_bad(error)
        else:
            logger.debug("skipped: %s", error)

    def finish(self) -> None:
        """Log one warning with the counts when bad records were skipped and nobody was told."""
        if self.count and self._on_bad is None:
            summary = ", ".join(f"{n} x {reason}" for reason, n in sorted(self.reasons.items()))
            logger.warning("%s skipped %d bad record(s): %s", self._what, self.count, summary)
