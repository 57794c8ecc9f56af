"""Checkpoints are staged atomically and validated completely; a torn folder is never used."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from pipelines.checkpoint import (
    DEEPSPEED_DIR,
    DEEPSPEED_TAG,
    RAY_SNAPSHOT,
    InvalidCheckpointError,
    checkpoint_name,
    find_latest_checkpoint,
    load_model_state,
    newest_valid_checkpoint,
    prepare_resume,
    prune_local,
    publish_local,
    read_checkpoint,
    restore_engine,
    stage_checkpoint,
)


class FakeEngine:
    """Writes files where DeepSpeed's engine would (rank 0: model states; every rank: a shard)."""

    def __init__(self, rank: int):
        self.rank = rank

    def save_checkpoint(self, save_dir, tag, exclude_frozen_parameters):
        assert exclude_frozen_parameters
        folder = os.path.join(save_dir, tag)
        os.makedirs(folder, exist_ok=True)
        if self.rank == 0:
            module = {"w": torch.arange(4.0), "mba.gamma": torch.tensor([0.5])}
            torch.save({"module": module}, os.path.join(folder, "mp_rank_00_model_states.pt"))
            with open(os.path.join(save_dir, "latest"), "w") as f:
                f.write(tag)
        torch.save({"shard": torch.full((3,), float(self.rank))}, os.path.join(folder, f"zero_pp_rank_{self.rank}_optim.pt"))


def _meta(step: int, world_size: int = 1) -> dict:
    return {
        "step": step,
        "world_size": world_size,
        "config": {"name": "x"},
        "trainable_parameters": ["w", "mba.gamma"],
        "reshaped_scalars": ["mba.gamma"],
    }


def _write(tmp_path, step: int, *, world_size: int = 1, before_commit=None, save_id: str = "s") -> str:
    """Stage every rank and merge them into run/checkpoint_<step> the way Ray's upload does."""
    staging, run = tmp_path / "staging", tmp_path / "run"
    staging.mkdir(exist_ok=True)
    run.mkdir(exist_ok=True)
    staged = [
        stage_checkpoint(
            FakeEngine(rank), str(staging), step=step, rank=rank, save_id=save_id,
            rank_state={"data_position": 10 * step + rank},
            meta=_meta(step, world_size) if rank == 0 else None, before_commit=before_commit,
        )
        for rank in range(world_size)
    ]
    if world_size == 1:
        return publish_local(staged[0], str(run), step)
    target = run / checkpoint_name(step)
    for folder in staged:
        shutil.copytree(folder, target, dirs_exist_ok=True)
    return str(target)


def test_written_checkpoint_reads_back(tmp_path):
    path = _write(tmp_path, 3)
    assert os.path.basename(path) == "checkpoint_000003"
    assert not list((tmp_path / "staging").iterdir())  # moved, nothing left behind
    info = read_checkpoint(path)
    assert (info.step, info.world_size, info.rank_states) == (3, 1, [{"data_position": 30}])
    assert info.config == {"name": "x"}
    manifest = json.loads((tmp_path / "run" / "checkpoint_000003" / "manifest_rank_0.json").read_text())
    assert f"{DEEPSPEED_DIR}/{DEEPSPEED_TAG}/mp_rank_00_model_states.pt" in manifest["files"]


def test_model_state_gets_its_scalar_shapes_back(tmp_path):
    state = load_model_state(_write(tmp_path, 1))
    assert state["mba.gamma"].shape == () and float(state["mba.gamma"]) == 0.5
    assert torch.equal(state["w"], torch.arange(4.0))


def test_multi_rank_checkpoint_needs_every_rank(tmp_path):
    path = _write(tmp_path, 2, world_size=2)
    assert read_checkpoint(path).rank_states == [{"data_position": 20}, {"data_position": 21}]
    os.remove(os.path.join(path, "manifest_rank_1.json"))
    with pytest.raises(InvalidCheckpointError, match="manifest_rank_1.json is missing"):
        read_checkpoint(path)


def test_parts_of_two_saves_of_the_same_step_are_rejected(tmp_path):
    path = _write(tmp_path, 2, world_size=2, save_id="first")
    rank1 = json.loads(open(os.path.join(path, "manifest_rank_1.json")).read())
    shutil.rmtree(path)
    path = _write(tmp_path, 2, world_size=2, save_id="second")
    # A rank-1 part left over from the first attempt, complete in itself, mixed into the second.
    open(os.path.join(path, "manifest_rank_1.json"), "w").write(json.dumps(rank1))
    with pytest.raises(InvalidCheckpointError, match="another save"):
        read_checkpoint(path)


@pytest.mark.parametrize("damage", ["delete", "truncate", "flip", "meta", "manifest_json"])
def test_torn_checkpoints_are_rejected(tmp_path, damage):
    path = _write(tmp_path, 1)
    shard = os.path.join(path, DEEPSPEED_DIR, DEEPSPEED_TAG, "zero_pp_rank_0_optim.pt")
    if damage == "delete":
        os.remove(shard)
    elif damage == "truncate":
        with open(shard, "r+b") as f:
            f.truncate(10)
    elif damage == "flip":
        data = bytearray(open(shard, "rb").read())
        data[-1] ^= 0xFF
        open(shard, "wb").write(bytes(data))
    elif damage == "meta":
        os.remove(os.path.join(path, "salma_checkpoint.json"))
    else:
        open(os.path.join(path, "manifest_rank_0.json"), "w").write("{not json")
    with pytest.raises(InvalidCheckpointError):
        read_checkpoint(path)


def test_interrupted_write_leaves_only_a_partial_folder(tmp_path):
    _write(tmp_path, 2)

    def killed():
        raise KeyboardInterrupt  # stands in for the process dying half-way

    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, 4, before_commit=killed)
    assert [p.name for p in (tmp_path / "staging").iterdir()] == ["checkpoint_000004.rank0.partial"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint_000002"]
    assert find_latest_checkpoint(tmp_path / "run").step == 2
    # Writing the same step again starts from a clean staging folder.
    _write(tmp_path, 4)
    assert not list((tmp_path / "staging").iterdir())
    assert find_latest_checkpoint(tmp_path / "run").step == 4


def test_latest_skips_a_torn_newer_checkpoint(tmp_path):
    for step in (2, 4, 6):
        _write(tmp_path, step)
    os.remove(os.path.join(tmp_path / "run" / "checkpoint_000006", "manifest_rank_0.json"))
    assert find_latest_checkpoint(tmp_path / "run").step == 4
    assert find_latest_checkpoint(tmp_path / "nothing") is None


def test_prune_keeps_the_newest(tmp_path):
    for step in (2, 4, 6):
        _write(tmp_path, step)
    removed = prune_local(str(tmp_path / "run"), keep=2)
    assert [os.path.basename(p) for p in removed] == ["checkpoint_000002"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint_000004", "checkpoint_000006"]


def test_restore_refuses_another_world_size_or_other_parameters(tmp_path):
    path = _write(tmp_path, 2, world_size=2)
    with pytest.raises(InvalidCheckpointError, match="train.num_workers=2"):
        restore_engine(None, path, world_size=1, trainable_parameters=["w", "mba.gamma"])
    with pytest.raises(InvalidCheckpointError, match="trained parameters differ"):
        restore_engine(None, path, world_size=2, trainable_parameters=["w"])


def _ray_snapshot(run, *names: str) -> None:
    """A Ray Train run snapshot that names these checkpoint folders (the fields we read)."""
    results = [{"checkpoint_dir_name": name, "metrics": {}} for name in names]
    (run / RAY_SNAPSHOT).write_text(json.dumps({"checkpoint_results": results, "latest_checkpoint_result": results[-1]}))


def test_prepare_resume_sets_aside_a_deleted_or_damaged_latest_and_rays_record(tmp_path):
    for step in (2, 4, 6):
        _write(tmp_path, step)
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoint_000006")  # deleted by hand
    os.truncate(run / "checkpoint_000004" / f"{DEEPSPEED_DIR}/{DEEPSPEED_TAG}/mp_rank_00_model_states.pt", 10)
    _ray_snapshot(run, "checkpoint_000002", "checkpoint_000004", "checkpoint_000006")
    assert prepare_resume(run).step == 2
    assert sorted(os.listdir(run)) == ["checkpoint_000002", "checkpoint_000004.invalid", f"{RAY_SNAPSHOT}.stale"]


def test_prepare_resume_keeps_rays_record_when_it_names_only_good_checkpoints(tmp_path):
    for step in (2, 4):
        _write(tmp_path, step)
    run = tmp_path / "run"
    _ray_snapshot(run, "checkpoint_000002")  # Ray registered 2; 4 is complete on disk
    assert prepare_resume(run).step == 4
    assert sorted(os.listdir(run)) == ["checkpoint_000002", "checkpoint_000004", RAY_SNAPSHOT]


def test_a_worker_resumes_from_the_newest_complete_checkpoint_not_rays_offer(tmp_path, caplog):
    for step in (2, 4):
        _write(tmp_path, step, world_size=2)
    run = tmp_path / "run"
    # A worker was lost after both ranks had written checkpoint 4 but before Ray registered it.
    assert newest_valid_checkpoint(str(run), str(run / "checkpoint_000002")).step == 4
    assert "resuming from checkpoint_000004" in caplog.text
    # Ray's latest damaged since: the newest one that verifies.
    os.remove(run / "checkpoint_000004" / "manifest_rank_1.json")
    assert newest_valid_checkpoint(str(run), str(run / "checkpoint_000004")).step == 2
    assert newest_valid_checkpoint(str(tmp_path / "empty"), None) is None
