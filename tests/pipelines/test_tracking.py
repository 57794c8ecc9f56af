"""MLflow behind the Tracker interface, on a real SQLite backend in tmp_path."""

from __future__ import annotations

import pytest

from pipelines import tracking
from pipelines.config import ExperimentConfig, TrackingConfig


def _cfg(tmp_path, **tracking_fields) -> ExperimentConfig:
    return ExperimentConfig(
        name="exp", workdir=str(tmp_path / "work"), model={"preset": "tiny"},
        tracking=TrackingConfig(experiment="salma-test", **tracking_fields),
    )


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = tracking.resolve_tracking_uri(TrackingConfig(), workdir=str(tmp_path))
    assert default == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking.resolve_tracking_uri(TrackingConfig(), workdir=str(tmp_path)) == "http://mlflow:5000"
    explicit = tracking.resolve_tracking_uri(TrackingConfig(uri="sqlite:///rel/x.db"), workdir=str(tmp_path))
    assert explicit.startswith("sqlite:////") and explicit.endswith("/rel/x.db")  # made absolute


def test_driver_run_then_rank0_logs_into_it_by_id(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(tmp_path)
    driver = tracking.start_run(cfg, run_name="r1", resume_run_id=None, tags={"preset": "tiny", "experiment": "exp"})
    uri = driver.tracking_uri
    assert uri == f"sqlite:///{(tmp_path / 'work').resolve()}/mlflow.db"
    driver.log_params(tracking.flatten_params(cfg.resolved()))
    artifact = tmp_path / "config.yaml"
    artifact.write_text("name: exp\n")
    driver.log_artifact(str(artifact))
    driver.set_tags(tracking.system_tags(tmp_path))

    rank0 = tracking.worker_tracker(tracking_uri=uri, run_id=driver.run_id, rank=0)
    rank1 = tracking.worker_tracker(tracking_uri=uri, run_id=driver.run_id, rank=1)
    assert isinstance(rank1, tracking.NoopTracker) and rank1.run_id is None
    for step in (1, 2):
        rank0.log_metrics({"loss/lm": 1.0 / step, "loss/total": 2.0 / step, "lr": 0.1}, step=step)
        rank1.log_metrics({"loss/lm": 99.0}, step=step)
    rank0.set_tags(tracking.hardware_tags(world_size=2, backend="gloo", precision="fp32", use_gpu=False))
    driver.finish()

    client = _client(uri)
    runs = client.search_runs([client.get_experiment_by_name("salma-test").experiment_id])
    assert [r.info.run_id for r in runs] == [driver.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert run.data.params["train.lr"] == str(cfg.train.lr)
    assert run.data.params["model.mba.tau"] == "1.0"
    assert run.data.tags["preset"] == "tiny" and run.data.tags["hw.backend"] == "gloo"
    assert run.data.tags["sys.torch"] and "mlflow.source.git.commit" in run.data.tags
    assert [(m.step, m.value) for m in client.get_metric_history(driver.run_id, "loss/lm")] == [(1, 1.0), (2, 0.5)]
    artifacts = [a.path for a in client.list_artifacts(driver.run_id)]
    assert artifacts == ["config.yaml"]
    assert client.get_experiment_by_name("salma-test").artifact_location.startswith("file://")


def test_resume_reopens_the_same_run_and_keeps_params_immutable(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(tmp_path)
    first = tracking.start_run(cfg, run_name="r", resume_run_id=None, tags={})
    first.log_params({"train.max_steps": 10, "a": 1})
    first.finish("FAILED")

    again = tracking.start_run(cfg, run_name="r", resume_run_id=first.run_id, tags={})
    assert again.run_id == first.run_id
    again.log_params({"train.max_steps": 20, "a": 1, "b": [1, 2]})
    client = _client(again.tracking_uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "RUNNING"
    assert run.data.params == {"train.max_steps": "10", "a": "1", "b": "[1, 2]"}
    assert '"now": "20"' in run.data.tags["salma.changed_params"]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_disabled_tracking_is_a_noop(tmp_path):
    tracker = tracking.start_run(_cfg(tmp_path, enabled=False), run_name="r", resume_run_id=None, tags={})
    assert isinstance(tracker, tracking.NoopTracker)
    tracker.log_metrics({"x": 1.0}, step=1)
    tracker.finish()
    assert not (tmp_path / "work").exists()


def test_flatten_params():
    assert tracking.flatten_params({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


@pytest.mark.parametrize("status", ["FAILED", "KILLED"])
def test_finish_status(tmp_path, monkeypatch, status):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = tracking.start_run(_cfg(tmp_path), run_name="r", resume_run_id=None, tags={})
    tracker.finish(status)
    assert _client(tracker.tracking_uri).get_run(tracker.run_id).info.status == status


def test_a_run_whose_driver_is_gone_is_ended_killed_by_the_next_driver(tmp_path, monkeypatch):
    import subprocess
    import sys

    import psutil

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(tmp_path)
    uri = tracking.tracking_uri(cfg)
    gone = tracking.start_run(cfg, run_name="gone", resume_run_id=None, tags={})
    live = tracking.start_run(cfg, run_name="live", resume_run_id=None, tags={})
    remote = tracking.start_run(cfg, run_name="remote", resume_run_id=None, tags={})
    child = psutil.Popen([sys.executable, "-c", "import time; time.sleep(30)"], stdout=subprocess.DEVNULL)
    dead_driver = tracking.driver_identity(child.pid)
    child.kill()
    child.wait()
    client = _client(uri)
    client.set_tag(gone.run_id, tracking.DRIVER_TAG, dead_driver)
    client.set_tag(remote.run_id, tracking.DRIVER_TAG, "another-host:1:1")
    assert live.run_id  # its tag names this (running) process

    newcomer = tracking.start_run(cfg, run_name="next", resume_run_id=None, tags={})
    status = {r: client.get_run(r).info.status for r in (gone.run_id, live.run_id, remote.run_id, newcomer.run_id)}
    assert status == {gone.run_id: "KILLED", live.run_id: "RUNNING", remote.run_id: "RUNNING", newcomer.run_id: "RUNNING"}
    assert dead_driver in client.get_run(gone.run_id).data.tags[tracking.END_REASON_TAG]
