"""Model folders given as a local path or a Hugging Face hub id.

A hub id (``owner/name``) is resolved through ``huggingface_hub.snapshot_download``, which
returns the local snapshot folder: from its cache when the files are there (offline, with
``local_files_only=True`` or ``HF_HUB_OFFLINE=1``), downloading otherwise. Only files are
fetched; nothing in them is executed (models load through native classes, never with
``trust_remote_code``).
"""

from __future__ import annotations

import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_hub_id(name: str) -> bool:
    """``owner/name`` that is not an existing local path."""
    return bool(_HUB_ID.match(name)) and ".." not in name and not Path(name).expanduser().exists()


def resolve_model_folder(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """A local folder for ``name_or_path``: the folder itself, or the hub snapshot of a hub id.

    Raises ``FileNotFoundError`` naming what was asked for when neither works.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if not is_hub_id(name):
        raise FileNotFoundError(f"{name}: no such folder (and not a hub id of the form owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    kwargs = {"repo_id": name, "revision": revision, "cache_dir": None if cache_dir is None else str(cache_dir)}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        return Path(snapshot_download(**kwargs))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        raise FileNotFoundError(f"{name}: not a local folder, and the hub id could not be resolved: {err}") from None
