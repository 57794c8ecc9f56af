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
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from salma.data.formats import source_format, source_format_names
from salma.data.record import SampleRecord

# The modules of the built-in readers; importing one registers its formats (in this order).
_BUILTIN_READERS = ("refcoco", "mevis", "revos", "ref_vos", "ref_sav", "llava", "chatunivi", "gcg", "own_data")
for _module in _BUILTIN_READERS:
    importlib.import_module(f"salma.data.{_module}")
BUILTIN_FORMATS: tuple[str, ...] = source_format_names()


def read_source(format: str, root: str | Path, split: str, **options: Any) -> list[SampleRecord]:
    """Read one split of one source with the reader registered for ``format``."""
    return source_format(format).read(root, split, **options)
