"""Copies of training run folders for tests that damage or resume them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def copy_run(run_dir: str, target: Path) -> Path:
    """A copy of a run folder that resumes into a new MLflow run (the copy's ``run.json`` forgets
    the original's run id, which lives in the original's database)."""
    shutil.copytree(run_dir, target)
    info = json.loads((target / "run.json").read_text())
    info.pop("mlflow_run_id", None)
    (target / "run.json").write_text(json.dumps(info))
    return target
