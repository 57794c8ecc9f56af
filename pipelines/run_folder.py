"""The folder of one logical training run: ``<storage>/<name>/``.

Ray Train writes its checkpoints (``checkpoint_<step>``) and its checkpoint-manager snapshot
there; the pipeline adds ``config.yaml`` (the resolved config of the latest attempt) and
``run.json`` (the MLflow run id and the attempts). ``--resume RUN_DIR`` relaunches Ray Train with
the same ``RunConfig(name, storage_path)``, which is how Train V2 resumes a run, and reuses the
MLflow run. Storage is ``$SALMA_STORAGE_PATH`` (a shared path or an object-store URI on
clusters) or the config's ``workdir``; small files go through pyarrow so both work.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import yaml

from pipelines.config import ExperimentConfig, apply_overrides

STORAGE_ENV_VAR = "SALMA_STORAGE_PATH"
CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunFolder:
    storage_path: str
    name: str

    @property
    def path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def local_path(self) -> str | None:
        """The folder as a local path, or None when it lives in an object store."""
        return None if "://" in self.storage_path else self.path

    @classmethod
    def new(cls, cfg: ExperimentConfig) -> "RunFolder":
        """A fresh, uniquely named run (Ray resumes whatever has the same name, so never reuse)."""
        storage = os.environ.get(STORAGE_ENV_VAR) or cfg.absolute(cfg.workdir)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return cls(storage_path=_absolute(storage), name=f"{cfg.name}-{stamp}-{uuid.uuid4().hex[:6]}")

    @classmethod
    def existing(cls, run_dir: str) -> "RunFolder":
        run_dir = _absolute(run_dir).rstrip("/")
        storage, _, name = run_dir.rpartition("/")
        folder = cls(storage_path=storage, name=name)
        if not folder.exists(RUN_FILE):
            raise FileNotFoundError(f"{run_dir} is not a training run folder (it has no {RUN_FILE})")
        return folder

    # ------------------------------------------------------------------ small files
    def exists(self, name: str) -> bool:
        fs, path = pyarrow.fs.FileSystem.from_uri(f"{self.path}/{name}")
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound

    def read_text(self, name: str) -> str:
        fs, path = pyarrow.fs.FileSystem.from_uri(f"{self.path}/{name}")
        with fs.open_input_stream(path) as f:
            return f.read().decode()

    def write_text(self, name: str, text: str) -> None:
        fs, path = pyarrow.fs.FileSystem.from_uri(f"{self.path}/{name}")
        fs.create_dir(path.rpartition("/")[0], recursive=True)
        # Write-then-move, so a reader never sees half a file.
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:6]}"
        with fs.open_output_stream(tmp) as f:
            f.write(text.encode())
        fs.move(tmp, path)

    # ------------------------------------------------------------------ run metadata
    def run_info(self) -> dict[str, Any]:
        return json.loads(self.read_text(RUN_FILE)) if self.exists(RUN_FILE) else {}

    def record_attempt(self, cfg: ExperimentConfig, *, mlflow_run_id: str | None, tracking_uri: str | None) -> None:
        info = self.run_info()
        info.update(name=self.name, path=self.path, mlflow_run_id=mlflow_run_id, tracking_uri=tracking_uri)
        info.setdefault("attempts", []).append(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.write_text(CONFIG_FILE, yaml.safe_dump(cfg.resolved(), sort_keys=False))
        self.write_text(RUN_FILE, json.dumps(info, indent=1))

    def load_config(self, overrides: list[str] | None = None) -> ExperimentConfig:
        """The resolved config saved by the last attempt, with ``key=value`` overrides on top."""
        data = yaml.safe_load(self.read_text(CONFIG_FILE)) or {}
        return ExperimentConfig.model_validate(apply_overrides(data, overrides or []))


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())
