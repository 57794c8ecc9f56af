"""Faults in local mode: the skip report survives a run stopped by the bad-record threshold, and
SIGTERM to a driver ends its MLflow run KILLED. The
checkpoint fallback on resume is tested in test_checkpoint.py (the choice) and test_train_ray.py
(a relaunch whose latest checkpoint, registered by Ray, was truncated)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from pipelines.data import TooManyBadRecords
from pipelines.train import train


def test_bad_record_report_is_written_when_the_threshold_stops_the_run(ray_cluster, synthetic_data, tiny_experiment, tmp_path):
    copy = tmp_path / "refer"
    shutil.copytree(synthetic_data / "refer", copy)
    for image in (copy / "images").rglob("*.jpg"):
        image.write_bytes(b"not a jpeg")
    cfg = tiny_experiment(
        tmp_path, f"data.sources=[{{name: refcoco, format: refcoco, root: {copy / 'refcoco'}}}]",
        "data.max_bad_fraction=0.1", "tracking.enabled=false",
    )
    with pytest.raises(TooManyBadRecords, match="truncated or unreadable image"):
        train(cfg)
    (report,) = (tmp_path / "runs").glob("tiny-*/bad_records.rank0.json")
    content = json.loads(report.read_text())
    assert content["skipped"] >= 20 and content["skipped"] == content["rows_seen"]
    assert {r["reason"] for r in content["records"]} == {"truncated or unreadable image"}
    assert sum(r["count"] for r in content["records"]) == content["skipped"]



def test_sigterm_to_the_driver_ends_its_mlflow_run_killed(ray_cluster, synthetic_data, tmp_path):
    """A real driver process (``python -m pipelines.train``, local mode, joining the test
    cluster through RAY_ADDRESS) gets SIGTERM mid-run: its own handler takes it, it exits, and
    its run is KILLED."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [
        f"workdir={tmp_path / 'runs'}", f"tracking.uri={uri}", "tracking.experiment=sigterm", "name=tiny",
        "model.preset=tiny", "data.num_frames=2", "data.max_objects=2", "data.cpus_per_task=0.25",
        f"data.sources=[{{name: refcoco, format: refcoco, root: {synthetic_data / 'refer' / 'refcoco'}}}]",
        "train.num_workers=0", "train.batch_size_per_worker=1", "train.max_steps=100000",
        "train.checkpoint_every=100000", "train.log_every=1",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "pipelines.train", *overrides], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        client, run = None, None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            time.sleep(1)
            # run.json names the MLflow run once the driver has created it (and the database).
            infos = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("tiny-*/run.json")]
            if infos:
                client = client or MlflowClient(tracking_uri=uri)
                if client.get_metric_history(infos[0]["mlflow_run_id"], "loss/total"):
                    run = client.get_run(infos[0]["mlflow_run_id"])
                    break
        assert run is not None, f"the driver never logged a step: {(tmp_path / 'driver.log').read_text()[-2000:]}"
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    assert driver.returncode != 0
    log_text = (tmp_path / "driver.log").read_text()
    assert client.get_run(run.info.run_id).info.status == "KILLED", log_text[-2000:]
    # The driver's own handler took the signal, not the C++ one Ray's core worker installs when it
    # connects (it prints this line; once it left the process dead and the run RUNNING).
    assert "SIGTERM received at time" not in log_text
