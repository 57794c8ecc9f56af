"""Training with two Ray Train workers on the private local cluster: a plain run, the worker-kill
test (a worker process is SIGKILLed mid-run; Ray restarts the group from the newest complete
checkpoint and the final weights equal an uninterrupted run's bit for bit), and ``--resume`` of a failed run."""

from __future__ import annotations

import json
import math
import os

import pytest
import ray.train

from pipelines.checkpoint import RAY_SNAPSHOT, read_checkpoint
from pipelines.fault_injection import ENV_VAR
from pipelines.train import train

from test_train import LOSS_TERMS, assert_same_weights

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TWO_WORKERS = ("train.num_workers=2", "train.cpus_per_worker=1")


def _history(cfg, run_id: str, name: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(tracking_uri=cfg.tracking.uri).get_metric_history(run_id, name)]


def _runs(cfg):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    return client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, tiny_experiment, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-workers")
    cfg = tiny_experiment(folder, *TWO_WORKERS, "train.max_failures=1")
    return cfg, train(cfg)


def test_two_workers_train_and_checkpoint(uninterrupted):
    cfg, result = uninterrupted
    assert result.metrics["step"] == 4
    assert all(math.isfinite(result.metrics[f"loss/{term}"]) for term in LOSS_TERMS)
    info = read_checkpoint(result.checkpoint_path)
    assert (info.step, info.world_size) == (4, 2)
    assert info.rank_states == [{"data_position": 4}, {"data_position": 4}]
    assert sorted(p for p in os.listdir(result.run_dir) if p.startswith("checkpoint_0")) == [
        "checkpoint_000002", "checkpoint_000004",
    ]
    (run,) = _runs(cfg)
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
    assert run.data.tags["hw.world_size"] == "2" and run.data.tags["hw.backend"] == "gloo"
    assert [step for step, _ in _history(cfg, run.info.run_id, "loss/total")] == [1, 2, 3, 4]


def test_killed_worker_is_restarted_from_the_newest_complete_checkpoint_and_ends_bit_identical(
    uninterrupted, tiny_experiment, tmp_path, monkeypatch
):
    ref_cfg, reference = uninterrupted
    marker = tmp_path / "killed"
    # Rank 1 SIGKILLs itself as soon as both ranks' reports of the checkpoint of step 2 have
    # returned: both parts are in the run folder, whether or not Ray has registered the
    # checkpoint yet. Ray restarts both workers, which resume from that checkpoint (the newest
    # complete one), not from an older one or the start, and run steps 3 and 4.
    monkeypatch.setenv(ENV_VAR, json.dumps({"rank": 1, "step": 2, "action": "kill", "phase": "reported", "marker": str(marker)}))
    cfg = tiny_experiment(tmp_path, *TWO_WORKERS, "train.max_failures=1")
    result = train(cfg)
    assert marker.exists(), "the fault did not fire"
    assert result.metrics["step"] == 4
    assert_same_weights(result.checkpoint_path, reference.checkpoint_path)

    (run,) = _runs(cfg)  # the restart logged into the same MLflow run
    history = _history(cfg, run.info.run_id, "loss/total")
    # Rank 0 never finishes step 3 before the group is torn down (its gradient all-reduce needs
    # rank 1), so each step is logged once, and the values equal the uninterrupted run's.
    assert [step for step, _ in history] == [1, 2, 3, 4]
    assert [v for _, v in history] == [v for _, v in _history(ref_cfg, reference.run_id, "loss/total")]


def test_resume_relaunches_a_failed_run_under_its_name(uninterrupted, tiny_experiment, tmp_path, monkeypatch):
    """The run fails after checkpoints 2 and 3 (one per step here), and then the latest one, the
    one Ray registered last, is truncated: the relaunch sets it and Ray's record of the run
    aside, resumes from checkpoint 2 and ends bit-identical to the uninterrupted run."""
    _, reference = uninterrupted
    marker = tmp_path / "failed"
    monkeypatch.setenv(ENV_VAR, json.dumps({"rank": 0, "step": 3, "action": "raise", "phase": "step", "marker": str(marker)}))
    cfg = tiny_experiment(tmp_path, *TWO_WORKERS, "train.max_failures=0", "train.checkpoint_every=1")
    with pytest.raises(ray.train.TrainingFailedError):
        train(cfg)
    (run_dir,) = [p.path for p in os.scandir(tmp_path / "runs") if p.name.startswith("tiny-")]
    assert sorted(p for p in os.listdir(run_dir) if p.startswith("checkpoint_0")) == ["checkpoint_000002", "checkpoint_000003"]
    optimizer = os.path.join(run_dir, "checkpoint_000003", "deepspeed", "state", "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    os.truncate(optimizer, 64)
    result = train(cfg, resume=run_dir)
    assert result.run_dir == run_dir
    assert_same_weights(result.checkpoint_path, reference.checkpoint_path)
    assert os.path.isdir(os.path.join(run_dir, "checkpoint_000003.invalid"))
    assert os.path.isfile(os.path.join(run_dir, f"{RAY_SNAPSHOT}.stale"))
    assert read_checkpoint(os.path.join(run_dir, "checkpoint_000003")).step == 3  # written again
    (run,) = _runs(cfg)
    assert run.info.status == "FINISHED"


def test_a_worker_group_that_cannot_start_fails_after_bounded_retries(ray_cluster, tiny_experiment, tmp_path, monkeypatch):
    # 2 workers x 3 CPUs never fit the 4-CPU test cluster: each start attempt times out after 2 s,
    # and after train.startup_retries=1 retry the run fails instead of waiting forever.
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "2")
    cfg = tiny_experiment(tmp_path, "train.num_workers=2", "train.cpus_per_worker=3", "train.startup_retries=1")
    with pytest.raises(ray.train.ControllerError):
        train(cfg)
    (run,) = _runs(cfg)
    assert run.info.status == "FAILED"
