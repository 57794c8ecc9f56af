"""The built-in source formats and the one dispatch from a format name to its reader.

Importing this module registers the built-in readers (``salma.data.formats``: each reader
declares its name, media and scoring where it is defined); ``read_source`` dispatches through the
registry, so a format registered by another module works the same way. Per-format options are the
reader's keyword arguments (passed through ``read_source(..., **options)``):

- ``refcoco``: RefCOCO, RefCOCO+ and RefCOCOg; ``dataset="refcoco" | "refcoco+" | "refcocog"``
  and ``split_by`` (default ``unc`` / ``unc`` / ``umd``), ``image_folder`` (see ``salma.data.refcoco``).
- ``mevis``, ``revos``: ``meta_expressions`` + ``mask_dict`` (``salma.data.mevis`` / ``revos``).
- ``ref_youtube_vos``, ``ref_davis17``: ReferFormer layout, PNG or pickled masks
  (``salma.data.ref_vos``).
- ``ref_sav``: SA-V mp4 + masklets (``salma.data.ref_sav``).
- ``llava``: LLaVA-665K-style conversations (``salma.data.llava``).
- ``chatunivi``: Chat-UniVi video QA (``salma.data.chatunivi``).
- ``gcg``: GLaMM grounded captioning, ``layout="refcocog_gcg" | "grandf"`` (``salma.data.gcg``).
- ``own_data``: your own images and videos, a JSON Lines file ``<root>/<split>.jsonl`` naming
  media, expressions and optional masks; ``frame_stride`` (``salma.data.own_data``).

Every reader also takes ``on_bad`` (see ``salma.data.errors``) and ``allow_outside_root``: paths
in annotation files must stay inside their folder unless it is set (``salma.data.confinement``).

A split the folder does not hold is named with the ones it does: ``read_source`` adds them to a
missing annotation file's error, and ``split_note`` gives the same words to a caller that finds a
split empty.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from salma.data.errors import DatasetFormatError
from salma.data.formats import source_format, source_format_names
from salma.data.record import SampleRecord

# The modules of the built-in readers; importing one registers its formats (in this order).
_BUILTIN_READERS = ("refcoco", "mevis", "revos", "ref_vos", "ref_sav", "llava", "chatunivi", "gcg", "own_data")
for _module in _BUILTIN_READERS:
    importlib.import_module(f"salma.data.{_module}")
BUILTIN_FORMATS: tuple[str, ...] = source_format_names()


def read_source(format: str, root: str | Path, split: str, **options: Any) -> list[SampleRecord]:
    """Read one split of one source with the reader registered for ``format``. A missing
    annotation file of a split the folder does not hold names the splits it holds."""
    try:
        return source_format(format).read(root, split, **options)
    except DatasetFormatError as err:
        note = split_note(format, root, split, **options) if err.problem.startswith("file not found") else ""
        if not note:
            raise
        raise DatasetFormatError(err.path, err.problem + note) from None


def split_note(format: str, root: str | Path, split: str, **options: Any) -> str:
    """``"; <format> splits in <root>: a, b"`` (or ``"; no <format> split found in <root>"``) when
    ``split`` is not among the splits the folder holds; ``""`` when it is, when the format cannot
    list them or reads the same files for every split, and when listing fails (the note only
    adds to an error that is raised anyway)."""
    lister = source_format(format).splits
    if lister is None or not Path(root).is_dir():  # a missing folder: the error names it already
        return ""
    try:
        found = lister(root, **options)
    except (OSError, ValueError, DatasetFormatError):  # unreadable: the caller's own error says enough
        return ""
    if found is None or split in found:
        return ""
    where = Path(root).absolute()
    if not found:
        return f"; no {format} split found in {where}"
    return f"; {format} splits in {where}: {', '.join(found)}"
