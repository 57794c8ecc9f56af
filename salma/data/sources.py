"""The source formats and the one dispatch from a format name to its reader.

``SOURCE_FORMATS`` is the ``Literal`` type of what a data config's ``format`` field may say
(``SOURCE_FORMAT_NAMES`` the same names as a tuple). Per-format options are the
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

from pathlib import Path
from typing import Any, Literal, get_args

from salma.data.chatunivi import read_chatunivi
from salma.data.gcg import read_gcg
from salma.data.llava import read_llava
from salma.data.mevis import read_mevis
from salma.data.own_data import read_own_data
from salma.data.record import SampleRecord
from salma.data.ref_sav import read_ref_sav
from salma.data.ref_vos import read_ref_davis17, read_ref_youtube_vos
from salma.data.refcoco import read_refcoco
from salma.data.revos import read_revos

SOURCE_FORMATS = Literal[
    "refcoco",
    "mevis",
    "revos",
    "ref_youtube_vos",
    "ref_davis17",
    "ref_sav",
    "llava",
    "chatunivi",
    "gcg",
    "own_data",
]
SOURCE_FORMAT_NAMES: tuple[str, ...] = get_args(SOURCE_FORMATS)


def read_source(format: SOURCE_FORMATS, root: str | Path, split: str, **options: Any) -> list[SampleRecord]:
    """Read one split of one source with the reader of ``format``."""
    match format:
        case "refcoco":
            return read_refcoco(root, split, **options)
        case "mevis":
            return read_mevis(root, split, **options)
        case "revos":
            return read_revos(root, split, **options)
        case "ref_youtube_vos":
            return read_ref_youtube_vos(root, split, **options)
        case "ref_davis17":
            return read_ref_davis17(root, split, **options)
        case "ref_sav":
            return read_ref_sav(root, split, **options)
        case "llava":
            return read_llava(root, split, **options)
        case "chatunivi":
            return read_chatunivi(root, split, **options)
        case "gcg":
            return read_gcg(root, split, **options)
        case "own_data":
            return read_own_data(root, split, **options)
        case _:
            raise ValueError(f"unknown source format {format!r}; expected one of {', '.join(SOURCE_FORMAT_NAMES)}")
