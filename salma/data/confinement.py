"""Keeping names and paths read from annotation files inside the folders they belong to.

Annotation files are untrusted input. Two kinds of value in them end up as parts of file paths:

- **ids** that become one path component of an output or input file: MeViS / ReVOS /
  Ref-YouTube-VOS video ids (``JPEGImages/<video>/``, ``Annotations/<video>/<exp_id>/`` in the
  prediction folder), expression ids, frame names. ``plain_name_problem`` accepts only a plain
  file name: non-empty, not ``.`` or ``..``, without ``/``, ``\\``, NUL or unpaired surrogates.
  Anything else is a bad record (reason ``"id is not a plain name"``), never a path.
- **relative paths** to media: RefCOCO ``file_name``, LLaVA / Chat-UniVi / GCG ``image`` and
  ``video``, own-data media and mask paths. ``confined_path`` joins one to its folder and refuses
  (``OutsideRootError``) an absolute path, a ``..`` component, a NUL, and a path that resolves,
  through symlinks, outside the folder. A reader reports the record as ``"path outside the
  dataset root"`` unless its ``allow_outside_root`` option is on, which admits every such path
  (for datasets whose images are deliberately kept, or symlinked, elsewhere).

The folder itself comes from the user's own config and is trusted (it may be a symlink).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from salma.data.errors import BadRecordReporter

_SEPARATORS = ("/", "\\", "\x00")


class OutsideRootError(ValueError):
    """A path from an annotation file that leaves its folder (or cannot be resolved)."""


def unpaired_surrogate(text: str) -> int | None:
    """Position of the first unpaired UTF-16 surrogate (``"\\udcff"``), or None.

    JSON and pickles can carry them; they cannot be encoded as UTF-8, so a tokenizer or a file
    system call fails on them far from the file that held them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return err.start
    return None


def plain_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be used as one path component, or None when it is a plain name."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is empty or not text"
    if name in (".", ".."):
        return f"{name!r} names a folder, not a file"
    for char in _SEPARATORS:
        if char in name:
            return f"{name!r} holds the path separator or NUL {char!r}"
    if unpaired_surrogate(name) is not None:
        return f"{name!r} is not valid Unicode (an unpaired surrogate)"
    return None


def confined_path(folder: Path, relative: object, *, allow_outside_root: bool = False) -> Path:
    """``folder / relative``, refusing paths that leave ``folder`` (see the module docstring).

    With ``allow_outside_root`` an absolute path is used as is and ``..`` is followed; only
    empty or non-text values and NUL are still refused (no file system accepts them)."""
    if not isinstance(relative, str) or not relative:
        raise OutsideRootError(f"{relative!r} is not a path")
    if "\x00" in relative or unpaired_surrogate(relative) is not None:
        raise OutsideRootError(f"{relative!r} holds NUL or an unpaired surrogate")
    if allow_outside_root:
        return Path(relative) if os.path.isabs(relative) else folder / relative
    normal = relative.replace("\\", "/")
    if normal.startswith("/") or os.path.isabs(relative) or (len(normal) > 1 and normal[1] == ":"):
        raise OutsideRootError(f"{relative!r} is absolute; paths are relative to {folder}")
    if ".." in normal.split("/"):
        raise OutsideRootError(f"{relative!r} has a '..' component; paths must stay inside {folder}")
    path = folder / relative
    if not resolves_inside(path, folder):
        raise OutsideRootError(f"{relative!r} resolves (through a symlink) outside {folder}, or is a symlink loop")
    return path


def confined_or_reported(
    reporter: "BadRecordReporter",
    annotation_file: str | Path,
    folder: Path,
    relative: object,
    *,
    sample_id: str,
    allow_outside_root: bool = False,
) -> Path | None:
    """``confined_path``, or None after reporting the record as "path outside the dataset root"
    against ``annotation_file`` (the file that named the path)."""
    try:
        return confined_path(folder, relative, allow_outside_root=allow_outside_root)
    except OutsideRootError as exc:
        reporter.report(annotation_file, "path outside the dataset root", sample_id=sample_id, detail=str(exc))
        return None


def resolves_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (a folder or file named by plain names under ``folder``) resolves inside
    ``folder``; False when it cannot be resolved (a symlink loop)."""
    try:
        real, real_folder = path.resolve(), folder.resolve()
    except (OSError, RuntimeError):
        return False
    return real == real_folder or real_folder in real.parents
