"""Pickles that run code when loaded, for the tests that prove no loading path unpickles them.

``Payload(marker)`` pickles as a call of ``exec`` that creates ``marker``: a file that exists
after a load means the load ran code from the file. ``rehash`` rewrites a checkpoint manifest
entry so that a tampered file still verifies (the SHA-256 manifest proves completeness, not
authorship), which is what an attacker who can write the folder would do.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path


class Payload:
    def __init__(self, marker: str | Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({self.marker!r}).touch()",)


def write_poisoned_torch_file(file: str | Path, marker: str | Path) -> None:
    """A ``torch.save`` file whose top-level dict carries the payload beside a tensor."""
    import torch

    torch.save({"module": {"w": torch.zeros(2)}, "payload": Payload(marker)}, str(file))


def write_poisoned_pickle(file: str | Path, data, protocol: int = 2) -> None:
    """A plain pickle of ``data`` (which should contain a ``Payload`` somewhere)."""
    with open(file, "wb") as f:
        pickle.dump(data, f, protocol=protocol)


def rehash(checkpoint: str | Path, rel: str) -> None:
    """Make every manifest of ``checkpoint`` that lists ``rel`` agree with the file as it is now."""
    file = Path(checkpoint, rel)
    entry = {"size": file.stat().st_size, "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    for manifest in Path(checkpoint).glob("manifest_rank_*.json"):
        data = json.loads(manifest.read_text())
        if rel in data["files"]:
            data["files"][rel] = entry
            manifest.write_text(json.dumps(data))
    assert os.path.isfile(file)
