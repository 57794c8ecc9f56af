"""Loading top-level annotation files, failing fast with ``DatasetFormatError``.

Pickles execute code when loaded: ``load_pickle_file`` is only called for the formats whose
annotations are published as pickles (RefCOCO's ``refs(unc|umd|google).p`` and Ref-YouTube-VOS /
Ref-DAVIS17 ``mask_dict.pkl``); load them only from sources you trust. Every other format is JSON.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from salma.data.errors import DatasetFormatError


def load_json_file(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "file not found")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(path, f"not valid JSON: {exc}") from exc


def load_pickle_file(path: str | Path) -> Any:
    """Unpickle a trusted annotation file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "file not found")
    try:
        with path.open("rb") as f:
            return pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError) as exc:
        raise DatasetFormatError(path, f"not a readable pickle: {exc!r}") from exc


def require_mapping(data: Any, path: str | Path, *, key: str | None = None) -> dict:
    """``data`` (or ``data[key]``) must be a JSON object; raise DatasetFormatError otherwise."""
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise DatasetFormatError(path, f"expected a top-level object with key {key!r}")
        data = data[key]
    if not isinstance(data, dict):
        where = f"{key!r}" if key else "the top level"
        raise DatasetFormatError(path, f"expected an object at {where}, got {type(data).__name__}")
    return data


def require_list(data: Any, path: str | Path) -> list:
    if not isinstance(data, list):
        raise DatasetFormatError(path, f"expected a top-level list, got {type(data).__name__}")
    return data
