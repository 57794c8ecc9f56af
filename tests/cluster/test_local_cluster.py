"""The local multi-node Ray cluster of cluster/local_cluster.sh (a head and 2 worker nodes), and
the quickstart training submitted to it with ``ray job submit`` (the Jobs SDK): the job succeeds,
its MLflow run is in the SQLite DB of its workdir and its checkpoint is complete."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "cluster" / "local_cluster.sh"
RUNTIME_ENV = ROOT / "cluster" / "runtime_env.yaml"
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
RAY_BIN = Path(sys.executable).parent / "ray"
DASHBOARD_OFFSET = 1900  # local_cluster.sh serves the dashboard (the Jobs API) on port + 1900
# What the test's own environment must not hand to the cluster's processes (the session's private
# Ray from tests/conftest.py, tracking or storage settings of whoever runs the suite).
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is how pipelines.local_ray keeps that Ray on 127.0.0.1.
FOREIGN_ENV = (
    "RAY_ADDRESS", "RAY_GCS_SERVER_PORT", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "MLFLOW_TRACKING_URI", "SALMA_STORAGE_PATH",
)
SUBMIT_WINDOW_S = 120  # the head's job agent registers a few seconds after `ray start` returns
JOB_TIMEOUT_S = 600

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port() -> int:
    """A GCS port that is free and whose dashboard port (port + 1900) is free too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + DASHBOARD_OFFSET <= 65535 and _bindable(port + DASHBOARD_OFFSET):
            return port
    raise RuntimeError("no free pair of ports for the local cluster")


@pytest.fixture(scope="module")
def cluster(request):
    """Yields (GCS port, Jobs API address, the cluster's temp folder); always stops the cluster,
    and removes its folder (logs) unless a test failed."""
    port = _cluster_port()
    temp_dir = Path(f"/tmp/salma-ray-{port}")
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    env["RAY"] = str(RAY_BIN)
    failed_before = request.session.testsfailed
    try:
        subprocess.run([str(SCRIPT), "start", "--port", str(port), "--head-cpus", "2", "--worker-cpus", "1"],
                       check=True, env=env, timeout=180)
        yield port, f"http://127.0.0.1:{port + DASHBOARD_OFFSET}", temp_dir
    finally:
        subprocess.run([str(SCRIPT), "stop", "--port", str(port)], env=env, timeout=120)
        if request.session.testsfailed == failed_before:
            shutil.rmtree(temp_dir, ignore_errors=True)


def test_local_cluster_has_a_head_and_two_worker_nodes(cluster):
    port, _, _ = cluster
    deadline = time.time() + 60
    nodes = []
    while time.time() < deadline:
        out = subprocess.run([str(RAY_BIN), "status", f"--address=127.0.0.1:{port}"],
                             capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        nodes = [line for line in out.stdout.splitlines() if line.strip().startswith("1 node_")]
        if len(nodes) == 3:
            break
        time.sleep(2)
    assert len(nodes) == 3, out.stdout


# ------------------------------------------------------------------------------ ray job submit
def _quickstart_overrides(folder: Path) -> list[str]:
    """experiments/quickstart.yaml cut down to a 4-step job, with every path absolute under
    ``folder`` (a job's working directory is Ray's unpacked copy of the code, not a place for
    data or runs): the synthetic data and the pre-trained SAM-2 (both written by the job, the
    pre-training cut to 4 steps), the run folder and MLflow DB."""
    data = yaml.safe_load(QUICKSTART.read_text())["data"]
    synthetic = Path(data["synthetic"]["out"])

    def moved(sources: list[dict]) -> str:
        return json.dumps([{**s, "root": str(folder / "synthetic" / Path(s["root"]).relative_to(synthetic))}
                           for s in sources])

    return [
        f"workdir={folder / 'runs'}",
        f"data.synthetic.out={folder / 'synthetic'}",
        f"data.sources={moved(data['sources'])}",
        f"data.eval_sources={moved(data['eval_sources'])}",
        "data.num_frames=2",
        "data.max_objects=2",
        "train.batch_size_per_worker=1",
        "train.max_steps=4",
        "train.checkpoint_every=2",
        "train.log_every=1",
        f"sam_pretrain.out={folder / 'sam2_pretrained.pt'}",
        "sam_pretrain.steps=4",
        "sam_pretrain.batch_size=2",
        "sam_pretrain.video_steps=2",
        "sam_pretrain.clip_batch=1",
    ]


def _submit(address: str, **job) -> tuple[object, str]:
    """Submit, retrying while the dashboard or the head's job agent is not up yet."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + SUBMIT_WINDOW_S
    while True:
        try:
            client = JobSubmissionClient(address)
            return client, client.submit_job(**job)
        except (ConnectionError, RuntimeError) as err:  # the client's errors while the head starts
            retryable = isinstance(err, ConnectionError) or "No available agent" in str(err)
            if not retryable or time.time() > deadline:
                raise
        time.sleep(3)


def _wait(client, job_id: str) -> tuple[object, str]:
    from ray.job_submission import JobStatus

    deadline = time.time() + JOB_TIMEOUT_S
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.time() > deadline:
            client.stop_job(job_id)
            return f"{status} after {JOB_TIMEOUT_S} s (stopped by the test)", client.get_job_logs(job_id)
        time.sleep(3)
    return status, client.get_job_logs(job_id)


def test_ray_job_submit_trains_the_quickstart_and_tracks_it_in_mlflow(cluster, tmp_path):
    from mlflow import MlflowClient
    from ray.job_submission import JobStatus

    from pipelines.checkpoint import read_checkpoint

    _, address, temp_dir = cluster
    # What README documents: the repository as the working dir, with cluster/runtime_env.yaml's
    # excludes (its env_vars point at a real cluster's MLflow server and shared storage).
    excludes = yaml.safe_load(RUNTIME_ENV.read_text())["excludes"]
    # Plain `python`: local_cluster.sh puts the venv the nodes run from first on their PATH.
    entrypoint = shlex.join(["python", "-m", "pipelines.train", "--config", "experiments/quickstart.yaml",
                             *_quickstart_overrides(tmp_path)])
    client, job_id = _submit(address, entrypoint=entrypoint,
                             runtime_env={"working_dir": str(ROOT), "excludes": excludes})
    status, logs = _wait(client, job_id)
    assert status == JobStatus.SUCCEEDED, (
        f"job {job_id} ended {status}: {client.get_job_info(job_id).message}\n"
        f"--- job logs (last 12000 characters) ---\n{logs[-12000:]}\n"
        f"--- cluster logs: {temp_dir}/*/session_latest/logs"
    )

    # The code went up without the venv, the git folder, data or runs, and with all of salma/.
    (package,) = [p for p in temp_dir.glob("head/session_latest/runtime_resources/working_dir_files/_ray_pkg_*")
                  if p.is_dir()]
    shipped = {p.name for p in package.iterdir()}
    assert not shipped & {".venv", ".git", "data", "runs", ".bench"}, sorted(shipped)
    assert (package / "salma" / "data" / "refcoco.py").is_file(), "salma/data/ was excluded"

    (run_dir,) = (tmp_path / "runs").glob("quickstart-*")
    info = json.loads((run_dir / "run.json").read_text())
    checkpoint = read_checkpoint(run_dir / "checkpoint_000004")  # validates every file's checksum
    assert (checkpoint.step, checkpoint.world_size) == (4, 2)
    assert sorted(p.name for p in run_dir.glob("checkpoint_0*")) == ["checkpoint_000002", "checkpoint_000004"]

    db = tmp_path / "runs" / "mlflow.db"
    assert db.is_file(), f"no MLflow DB in the workdir: {sorted(os.listdir(tmp_path / 'runs'))}"
    mlflow = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("salma").experiment_id])
    assert run.info.run_id == info["mlflow_run_id"]
    assert run.info.status == "FINISHED", run.info
    assert run.data.tags["hw.world_size"] == "2" and run.data.params["train.max_steps"] == "4"
    # The quickstart's SAM-2 pre-training ran in the job and the workers loaded its checkpoint.
    assert (tmp_path / "sam2_pretrained.pt").is_file()
    meta = json.loads((tmp_path / "sam2_pretrained.pt.json").read_text())
    assert meta["trained_from"]["settings"]["video_steps"] == 2 and "track_iou" in meta["train_prompt_iou"]
    assert run.data.params["model.sam.checkpoint"] == str(tmp_path / "sam2_pretrained.pt")
    assert run.data.metrics["lr/sam.sam"] == pytest.approx(0.3 * run.data.metrics["lr"])
    history = mlflow.get_metric_history(run.info.run_id, "loss/total")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert all(math.isfinite(m.value) for m in history)
    assert run.data.metrics["final/loss/total"] == history[-1].value  # the driver's final metrics
    held_out = mlflow.get_metric_history(run.info.run_id, "val/mask_loss")  # at each checkpoint
    assert [m.step for m in held_out] == [2, 4] and all(math.isfinite(m.value) for m in held_out)
