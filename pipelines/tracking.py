"""Experiment tracking behind one small interface: MLflow on the driver and on rank 0, a no-op
everywhere else.

The driver creates the MLflow run (or reopens it on ``--resume``) and passes its id to the
workers; rank 0 logs into that same run by id, so restarts after a worker failure never create
duplicate runs. The tracking URI comes from ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///<workdir>/mlflow.db`` (absolute: Ray workers change directory). Open the UI on the
default with ``mlflow ui --backend-store-uri sqlite:///<workdir>/mlflow.db``.

A run whose driver dies does not stay RUNNING: the driver ends it KILLED on SIGINT/SIGTERM
(``pipelines.train``), and a driver killed outright (SIGKILL, a lost machine) is noticed by the
next driver on the same host that tracks into the same experiment. Each run carries the tag
``salma.driver`` (host, pid and process start time of the driver); ``start_run`` ends the RUNNING
runs of its experiment whose driver on this host is gone as KILLED, with the tag
``salma.end_reason`` saying so. ``--resume`` then reopens such a run as usual.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import platform
import socket
import subprocess
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from pipelines.config import ExperimentConfig, TrackingConfig

logger = logging.getLogger(__name__)

_PACKAGES = ("torch", "deepspeed", "ray", "mlflow", "transformers", "peft", "sam2", "salma")
# MLflow limits (mlflow.utils.validation): entities per log_batch call and param value length.
_MAX_PARAMS_PER_CALL = 100
_MAX_METRICS_PER_CALL = 1000
_MAX_PARAM_LENGTH = 6000
# MLflow 3's UI opens an experiment in its GenAI view (runs listed as "Evaluation runs") unless the
# experiment says it is model training; this tag is what its experiment page reads.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DRIVER_TAG = "salma.driver"
END_REASON_TAG = "salma.end_reason"


class Tracker(Protocol):
    """What the pipelines log through; ``run_id`` is None when nothing is tracked."""

    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None: ...

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


class NoopTracker:
    """Every rank but 0, and runs with ``tracking.enabled: false``."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        pass

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker:
    """Logs into one existing MLflow run through ``MlflowClient`` (no global ``mlflow`` state)."""

    def __init__(self, *, tracking_uri: str, run_id: str):
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._client = MlflowClient(tracking_uri=tracking_uri)

    @classmethod
    def create_run(
        cls, *, tracking_uri: str, experiment: str, run_name: str, artifact_root: str | None, tags: Mapping[str, Any]
    ) -> "MlflowTracker":
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        experiment_id = _experiment_id(client, experiment, artifact_root)
        run = client.create_run(experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
        return cls(tracking_uri=tracking_uri, run_id=run.info.run_id)

    def reopen(self) -> None:
        """Mark a resumed run as running again (it may have ended FAILED)."""
        self._client.update_run(self.run_id, status="RUNNING")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params are immutable in MLflow: on a resumed run, values that changed (e.g. a longer
        ``train.max_steps``) are recorded in the ``salma.changed_params`` tag instead."""
        from mlflow.entities import Param

        existing = self._client.get_run(self.run_id).data.params
        values = {k: _param_value(v) for k, v in params.items()}
        new = [Param(k, v) for k, v in values.items() if k not in existing]
        changed = {k: {"was": existing[k], "now": v} for k, v in values.items() if k in existing and existing[k] != v}
        for start in range(0, len(new), _MAX_PARAMS_PER_CALL):
            self._client.log_batch(self.run_id, params=new[start : start + _MAX_PARAMS_PER_CALL])
        if changed:
            logger.warning("run %s resumed with changed params: %s", self.run_id, sorted(changed))
            self.set_tags({"salma.changed_params": json.dumps(changed)[:_MAX_PARAM_LENGTH]})

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        for start in range(0, len(batch), _MAX_METRICS_PER_CALL):
            self._client.log_batch(self.run_id, metrics=batch[start : start + _MAX_METRICS_PER_CALL])

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, local_path, artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        for start in range(0, len(batch), _MAX_PARAMS_PER_CALL):
            self._client.log_batch(self.run_id, tags=batch[start : start + _MAX_PARAMS_PER_CALL])

    def finish(self, status: str = "FINISHED") -> None:
        self._client.set_terminated(self.run_id, status=status)


# ------------------------------------------------------------------------------ factories
def resolve_tracking_uri(tracking: TrackingConfig, *, workdir: str) -> str:
    """``tracking.uri`` → ``$MLFLOW_TRACKING_URI`` → ``sqlite:///<workdir>/mlflow.db``; a
    relative SQLite path is made absolute here, on the driver."""
    uri = tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(workdir).resolve()}/mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def tracking_uri(cfg: ExperimentConfig) -> str:
    """The tracking URI of an experiment (``resolve_tracking_uri`` with its workdir)."""
    return resolve_tracking_uri(cfg.tracking, workdir=cfg.absolute(cfg.workdir))


def start_run(cfg: ExperimentConfig, *, run_name: str, resume_run_id: str | None, tags: Mapping[str, Any]) -> Tracker:
    """The driver's tracker: a new MLflow run, or the run being resumed reopened by id."""
    if not cfg.tracking.enabled:
        return NoopTracker()
    workdir = cfg.absolute(cfg.workdir)
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    end_orphaned_runs(uri, cfg.tracking.experiment)
    driver = {DRIVER_TAG: driver_identity()}
    if resume_run_id is not None:
        tracker = MlflowTracker(tracking_uri=uri, run_id=resume_run_id)
        tracker.reopen()
        tracker.set_tags(driver)
        return tracker
    # Database backends have no artifact server: keep artifacts beside the run folders.
    artifact_root = None if uri.split(":", 1)[0] in ("http", "https", "databricks") else str(Path(workdir, "mlartifacts"))
    return MlflowTracker.create_run(
        tracking_uri=uri, experiment=cfg.tracking.experiment, run_name=run_name, artifact_root=artifact_root,
        tags={**tags, **driver},
    )


def driver_identity(pid: int | None = None) -> str:
    """``host:pid:start`` of a process (this one by default): with the start time, a recycled pid
    is never taken for the driver that logged the tag."""
    import psutil

    process = psutil.Process(pid)
    return f"{socket.gethostname()}:{process.pid}:{int(process.create_time() * 1000)}"


def _driver_alive(identity: str) -> bool | None:
    """Whether the driver of a ``salma.driver`` tag still runs; None when it ran on another host
    (it cannot be checked from here)."""
    import psutil

    parts = identity.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname():
        return None
    try:
        return driver_identity(int(parts[1])) == identity
    except psutil.AccessDenied:  # another user's process with that pid: cannot tell
        return None
    except (psutil.NoSuchProcess, ValueError):
        return False


def end_orphaned_runs(tracking_uri: str, experiment: str) -> list[str]:
    """End as KILLED the RUNNING runs of ``experiment`` whose driver on this host is gone (module
    docstring); returns their ids."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    ended = []
    for run in client.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        identity = run.data.tags.get(DRIVER_TAG)
        if identity is None or _driver_alive(identity) is not False:
            continue
        client.set_tag(run.info.run_id, END_REASON_TAG, f"driver {identity} is gone; ended by a later driver")
        client.set_terminated(run.info.run_id, status="KILLED")
        logger.warning("MLflow run %s was left RUNNING by driver %s, which is gone: marked KILLED", run.info.run_id, identity)
        ended.append(run.info.run_id)
    return ended


def worker_tracker(*, tracking_uri: str | None, run_id: str | None, rank: int) -> Tracker:
    """Rank 0 logs into the driver's run; every other rank (and an untracked run) gets a no-op."""
    if rank != 0 or tracking_uri is None or run_id is None:
        return NoopTracker()
    return MlflowTracker(tracking_uri=tracking_uri, run_id=run_id)


# ------------------------------------------------------------------------------ content
def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` → ``{"train.lr": 1e-4}``; lists stay whole (one param)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


def system_tags(repo_dir: str | os.PathLike) -> dict[str, str]:
    """Package versions, Python and the git commit of the code (``mlflow.source.git.commit``)."""
    tags = {f"sys.{name}": _version(name) for name in _PACKAGES}
    tags["sys.python"] = platform.python_version()
    tags["sys.platform"] = platform.platform()
    tags["mlflow.source.git.commit"] = git_commit(repo_dir)
    return tags


def hardware_tags(*, world_size: int, backend: str, precision: str, use_gpu: bool) -> dict[str, str]:
    """What the workers run on, from rank 0's point of view."""
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if use_gpu else []
    return {
        "hw.world_size": str(world_size),
        "hw.backend": backend,
        "hw.precision": precision,
        "hw.device": "cuda" if use_gpu else "cpu",
        "hw.gpus": ", ".join(gpus) or "none",
        "hw.host": socket.gethostname(),
        "hw.cpu_count": str(os.cpu_count()),
        "hw.torch_threads": str(torch.get_num_threads()),
    }


def git_commit(repo_dir: str | os.PathLike) -> str:
    """HEAD of the repository holding the code; ``$SALMA_GIT_COMMIT`` where the code was shipped
    without its ``.git`` (Ray job working directories), else ``unknown``."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("SALMA_GIT_COMMIT", "unknown")


def _experiment_id(client, name: str, artifact_root: str | None) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    try:
        location = Path(artifact_root).resolve().as_uri() if artifact_root else None
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException:
        # Another driver (a parallel Tune trial) created it first.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text[:_MAX_PARAM_LENGTH]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        pass
    # Not installed as a distribution (e.g. this repository run from its folder): ask the module.
    try:
        module = importlib.import_module(package)
    except ImportError:
        return "not installed"
    return str(getattr(module, "__version__", "unknown"))
