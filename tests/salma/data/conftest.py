"""Shared fixtures of the data tests: one tiny synthetic output for the whole session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salma.data.synthetic import write_synthetic

SEED = 7


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic(out, seed=SEED, num_images=12, num_videos=4)
    return out


@pytest.fixture(scope="session")
def manifest(synthetic_dir) -> dict:
    return json.loads((synthetic_dir / "manifest.json").read_text())
