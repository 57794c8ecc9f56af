"""Loading top-level annotation files, failing fast with ``DatasetFormatError``.

Two published formats are pickles: RefCOCO's ``refs(unc|umd|google).p`` (a list of dicts of
ids, strings and sentence dicts) and Ref-YouTube-VOS / Ref-DAVIS17 ``mask_dict.pkl`` (a dict of
per-frame COCO RLE dicts). An ordinary ``pickle.load`` runs whatever code a file asks for, so
``load_pickle_file`` reads them with ``RestrictedUnpickler``: it builds only what pickle encodes
without naming a global (dict, list, tuple, str, bytes, int, float, bool, None) plus bytes in
the protocol-0..2 encoding (``_codecs.encode(text, "latin1")``, how Python 3 writes ``bytes``
at those protocols). Any other global (a class, ``os.system``, numpy arrays) is refused before
anything is called, with a ``DatasetFormatError`` naming the file. Every other format is JSON.
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


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds builtin containers and scalars only (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise pickle.UnpicklingError(
            f"it asks for the global {module}.{name}; annotation pickles hold only dicts, lists, "
            "tuples, strings, bytes and numbers, and a global could run code"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it asks for a persistent object; annotation pickles have none")


def _latin1_bytes(text: Any, encoding: Any = None) -> bytes:
    """The one call protocol-2 pickles make for ``bytes``; any other use is refused."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"it calls _codecs.encode with {type(text).__name__}, {encoding!r}, not bytes")
    return text.encode("latin1")


def load_pickle_file(path: str | Path) -> Any:
    """Unpickle an annotation file with ``RestrictedUnpickler`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "file not found")
    try:
        with path.open("rb") as f:
            return RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        raise DatasetFormatError(path, f"refused to unpickle: {exc}") from None
    except (EOFError, IndexError, KeyError, ValueError, TypeError, OverflowError, MemoryError, RecursionError) as exc:
        raise DatasetFormatError(path, f"not a readable pickle: {exc!r}") from None


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
