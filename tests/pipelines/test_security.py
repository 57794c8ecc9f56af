"""Files from outside run no code: a checkpoint whose pickle carries a payload is refused, with
an error naming the file, on every path that loads one (``salma export --checkpoint``,
``salma train --resume`` through DeepSpeed's loader), and the payload never runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hostile_pickles import rehash, write_poisoned_torch_file
from pipelines.checkpoint import DEEPSPEED_DIR, DEEPSPEED_TAG, UnsafeCheckpointError, load_model_state, read_checkpoint
from pipelines.cli import EXIT_USER_ERROR
from pipelines.cli import main as salma
from pipelines.train import train
from run_copies import copy_run

MODEL_STATES = f"{DEEPSPEED_DIR}/{DEEPSPEED_TAG}/mp_rank_00_model_states.pt"
OPTIMIZER_STATES = f"{DEEPSPEED_DIR}/{DEEPSPEED_TAG}/zero_pp_rank_0_mp_rank_00_optim_states.pt"


def _poisoned_copy(result, tmp_path, rel: str) -> tuple[Path, Path]:
    """A copy of the run's checkpoint with ``rel`` replaced by a payload pickle that still
    verifies against the (rewritten) manifest; returns the checkpoint and the payload's marker."""
    checkpoint = tmp_path / Path(result.checkpoint_path).name
    shutil.copytree(result.checkpoint_path, checkpoint)
    marker = tmp_path / "payload-ran"
    write_poisoned_torch_file(checkpoint / rel, marker)
    rehash(checkpoint, rel)
    read_checkpoint(checkpoint)  # the manifest check passes: only the loader can stop it
    return checkpoint, marker


def test_a_real_checkpoint_loads_under_the_restricted_unpickler(reference_run):
    state = load_model_state(reference_run[1].checkpoint_path)
    assert state and all(hasattr(value, "shape") for value in state.values())


def test_export_refuses_a_checkpoint_that_carries_code(reference_run, tmp_path, capsys):
    checkpoint, marker = _poisoned_copy(reference_run[1], tmp_path, MODEL_STATES)
    with pytest.raises(UnsafeCheckpointError, match="mp_rank_00_model_states.pt: refused to unpickle"):
        load_model_state(checkpoint)
    assert salma(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "export")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"{checkpoint / MODEL_STATES}: refused to unpickle (Unsupported global: GLOBAL exec" in err
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "export").exists()


def test_resume_refuses_deepspeed_states_that_carry_code(reference_run, tiny_experiment, tmp_path):
    _, result = reference_run
    run_dir = copy_run(result.run_dir, tmp_path / "run")
    checkpoint = run_dir / Path(result.checkpoint_path).name
    marker = tmp_path / "payload-ran"
    write_poisoned_torch_file(checkpoint / OPTIMIZER_STATES, marker)
    rehash(checkpoint, OPTIMIZER_STATES)
    cfg = tiny_experiment(tmp_path, "train.max_steps=6")
    with pytest.raises(UnsafeCheckpointError, match="zero_pp_rank_0_mp_rank_00_optim_states.pt: refused to unpickle"):
        train(cfg, resume=str(run_dir))
    assert not marker.exists(), "the payload ran"
