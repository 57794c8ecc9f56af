"""Training in local mode (``train.num_workers: 0``, the loop runs in this process): a tiny run
end to end, exact resume after a failure (``--resume``), and a failure while a checkpoint is being
written. The multi-worker Ray runs, including the worker-kill test, are in test_train_ray.py."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from pipelines.checkpoint import load_model_state, read_checkpoint
from pipelines.fault_injection import ENV_VAR, InjectedFault
from pipelines.train import main, train

LOSS_TERMS = ("lm", "mask_bce", "mask_dice", "iou", "object", "track", "boundary", "tmc", "total")


def _mlflow(cfg):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.tracking.uri)


def assert_same_weights(checkpoint_a: str, checkpoint_b: str) -> None:
    a, b = load_model_state(checkpoint_a), load_model_state(checkpoint_b)
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _arm(monkeypatch, tmp_path, **fault) -> None:
    monkeypatch.setenv(ENV_VAR, json.dumps({"marker": str(tmp_path / "fault-fired"), **fault}))


def test_tiny_run_writes_a_loadable_checkpoint_and_tracks_every_loss_term(reference_run):
    cfg, result = reference_run
    assert result.checkpoint_path == os.path.join(result.run_dir, "checkpoint_000004")
    assert sorted(p for p in os.listdir(result.run_dir) if p.startswith("checkpoint_")) == [
        "checkpoint_000002", "checkpoint_000004",
    ]
    assert result.metrics["step"] == 4
    assert all(math.isfinite(result.metrics[f"loss/{term}"]) for term in LOSS_TERMS)

    info = read_checkpoint(result.checkpoint_path)
    assert (info.step, info.world_size) == (4, 1)
    assert info.rank_states == [{"data_position": 4}]  # 4 steps x 1 sample
    assert info.reshaped_scalars == ["mba.gamma"]
    from salma.builder import build_salma

    model = build_salma(cfg.model_config_resolved).model
    model.load_state_dict(load_model_state(result.checkpoint_path))  # strict: every key, every shape

    client = _mlflow(cfg)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["preset"] == "tiny" and run.data.tags["experiment"] == "tiny"
    assert run.data.tags["hw.world_size"] == "1" and run.data.tags["hw.precision"] == "fp32"
    assert run.data.params["train.max_steps"] == "4"
    for name in [f"loss/{t}" for t in LOSS_TERMS] + ["lr", "gamma_scale", "aux_scale", "samples_per_s", "data_wait_s"]:
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2, 3, 4], name
    lrs = [m.value for m in client.get_metric_history(run.info.run_id, "lr")]
    # ceil(5% of 4) = 1 warm-up step at the full rate, then the cosine from 1 towards 0.
    assert lrs[0] == lrs[1] == pytest.approx(1e-3) and lrs[1] > lrs[2] > lrs[3] > 0
    assert "final/loss/total" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "bad_records.rank0.json"} <= artifacts


def test_resume_after_a_failure_replays_the_same_steps(reference_run, tiny_experiment, tmp_path, monkeypatch):
    ref_cfg, reference = reference_run
    cfg = tiny_experiment(tmp_path)
    _arm(monkeypatch, tmp_path, rank=0, step=3, action="raise", phase="step")
    with pytest.raises(InjectedFault):
        train(cfg)
    (run_dir,) = [p.path for p in os.scandir(tmp_path / "runs") if p.name.startswith("tiny-")]
    assert sorted(p for p in os.listdir(run_dir) if p.startswith("checkpoint_")) == ["checkpoint_000002"]

    assert main(["--resume", run_dir]) == 0  # the config comes from the run folder
    final = os.path.join(run_dir, "checkpoint_000004")
    assert_same_weights(final, reference.checkpoint_path)

    client = _mlflow(cfg)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["salma.resumed"] == "true"
    # Step 3 ran twice (before the failure and after resuming from step 2), identically, and
    # matches the uninterrupted run.
    history = client.get_metric_history(run.info.run_id, "loss/total")
    assert [m.step for m in history] == [1, 2, 3, 3, 4]
    reference_history = _mlflow(ref_cfg).get_metric_history(reference.run_id, "loss/total")
    assert [m.value for m in history[3:]] == [m.value for m in reference_history[2:]]
    assert history[2].value == history[3].value


def test_a_zero_stage_0_run_resumes_to_the_same_weights(ray_cluster, tiny_experiment, tmp_path, monkeypatch):
    """ZeRO stage 0 (`train.zero_stage: 0`, no partitioning) keeps each rank's whole optimizer state in its
    model-states file: a run that failed after its step-2 checkpoint resumes to the weights of an
    uninterrupted one, bit for bit."""
    reference = train(tiny_experiment(tmp_path / "reference", "train.zero_stage=0"))
    cfg = tiny_experiment(tmp_path / "failed", "train.zero_stage=0")
    _arm(monkeypatch, tmp_path, rank=0, step=3, action="raise", phase="step")
    with pytest.raises(InjectedFault):
        train(cfg)
    (run_dir,) = [p.path for p in os.scandir(tmp_path / "failed" / "runs") if p.name.startswith("tiny-")]
    result = train(cfg, resume=run_dir)
    assert read_checkpoint(result.checkpoint_path).step == 4
    assert_same_weights(result.checkpoint_path, reference.checkpoint_path)


def test_failure_while_writing_a_checkpoint_leaves_nothing_readable_behind(
    reference_run, tiny_experiment, tmp_path, monkeypatch
):
    _, reference = reference_run
    cfg = tiny_experiment(tmp_path)
    _arm(monkeypatch, tmp_path, rank=0, step=4, action="raise", phase="checkpoint")
    with pytest.raises(InjectedFault):
        train(cfg)
    (run_dir,) = [p.path for p in os.scandir(tmp_path / "runs") if p.name.startswith("tiny-")]
    assert sorted(p for p in os.listdir(run_dir) if p.startswith("checkpoint_")) == ["checkpoint_000002"]
    assert os.listdir(os.path.join(run_dir, ".staging")) == ["checkpoint_000004.rank0.partial"]

    result = train(cfg, resume=run_dir)
    assert result.checkpoint_path == os.path.join(run_dir, "checkpoint_000004")
    assert_same_weights(result.checkpoint_path, reference.checkpoint_path)
    assert not os.path.exists(os.path.join(run_dir, ".staging"))  # the stale part cleared, then the folder


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a training run folder"):
        main(["--resume", str(tmp_path)])
