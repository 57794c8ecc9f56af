"""Files from outside run no code: a checkpoint or annotation pickle that carries a payload is
refused, with an error naming the file, on every path that loads one (``salma export
--checkpoint``, ``salma train --resume`` through DeepSpeed's loader, the dataset readers behind
``salma infer`` and ``salma train``), and the payload never runs. A local Ray started by the
platform listens on the loopback interface only."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import psutil
import pytest

from hostile_pickles import Payload, rehash, write_poisoned_pickle, write_poisoned_torch_file
from pipelines.checkpoint import DEEPSPEED_DIR, DEEPSPEED_TAG, UnsafeCheckpointError, load_model_state, read_checkpoint
from pipelines.cli import EXIT_USER_ERROR
from pipelines.cli import main as salma
from pipelines.train import train
from salma.data.annotation_files import load_pickle_file
from salma.data.errors import DatasetFormatError
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


def _poisoned_refcoco(synthetic_data, tmp_path) -> tuple[Path, Path]:
    """A copy of the synthetic RefCOCO whose ``refs(unc).p`` carries a payload in one sentence."""
    shutil.copytree(synthetic_data / "refer", tmp_path / "refer")
    root, marker = tmp_path / "refer" / "refcoco", tmp_path / "payload-ran"
    refs = load_pickle_file(root / "refs(unc).p")
    refs[0]["sentences"][0]["sent"] = Payload(marker)
    write_poisoned_pickle(root / "refs(unc).p", refs)
    return root, marker


def test_infer_refuses_a_poisoned_refs_pickle(synthetic_data, tmp_path, capsys):
    root, marker = _poisoned_refcoco(synthetic_data, tmp_path)
    argv = ["infer", "--model", "tiny", "--dataset", f"refcoco:{root}", "--split", "val", "--out", str(tmp_path / "out"),
            "--num-actors", "0"]
    assert salma(argv) == EXIT_USER_ERROR
    assert f"{root / 'refs(unc).p'}: refused to unpickle: it asks for the global" in capsys.readouterr().err
    assert not marker.exists(), "the payload ran"


def test_infer_refuses_a_poisoned_mask_dict_pickle(synthetic_data, tmp_path, capsys):
    root, marker = tmp_path / "ref_youtube_vos", tmp_path / "payload-ran"
    shutil.copytree(synthetic_data / "ref_youtube_vos", root)
    # With a mask_dict.pkl beside JPEGImages/, the reader's default (masks=auto) reads it.
    write_poisoned_pickle(root / "valid" / "mask_dict.pkl", {"0": [Payload(marker)]})
    argv = ["infer", "--model", "tiny", "--dataset", f"ref_youtube_vos:{root}", "--split", "valid",
            "--out", str(tmp_path / "out"), "--num-actors", "0"]
    assert salma(argv) == EXIT_USER_ERROR
    assert f"{root / 'valid' / 'mask_dict.pkl'}: refused to unpickle: it asks for the global" in capsys.readouterr().err
    assert not marker.exists(), "the payload ran"


def test_training_refuses_a_poisoned_refs_pickle(synthetic_data, tiny_experiment, tmp_path):
    root, marker = _poisoned_refcoco(synthetic_data, tmp_path)
    cfg = tiny_experiment(tmp_path, f"data.sources=[{{name: refcoco, format: refcoco, root: {root}}}]")
    with pytest.raises(DatasetFormatError, match=r"refs\(unc\)\.p: refused to unpickle"):
        train(cfg)
    assert not marker.exists(), "the payload ran"


def test_local_ray_listens_on_loopback_only(ray_cluster):
    import ray

    # A task and an actor make sure worker processes (each with its own gRPC server) exist.
    ray.get(ray.remote(lambda: 1).remote())
    actor = ray.remote(type("Probe", (), {"ping": lambda self: 1})).remote()
    ray.get(actor.ping.remote())
    listening = {}
    for process in psutil.Process().children(recursive=True):
        try:
            sockets = process.net_connections(kind="inet")
        except psutil.Error:  # exited meanwhile
            continue
        for sock in sockets:
            if sock.status == psutil.CONN_LISTEN:
                listening.setdefault(process.name(), set()).add((sock.laddr.ip, sock.laddr.port))
    ray.kill(actor)
    names = " ".join(listening)
    assert "gcs_server" in names and "raylet" in names and "DashboardAgent" in names, listening
    gcs_port = int(ray_cluster.rpartition(":")[2])
    assert any(port == gcs_port for sockets in listening.values() for _, port in sockets)
    exposed = {
        (name, ip, port)
        for name, sockets in listening.items()
        for ip, port in sockets
        if not ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback
    }
    assert not exposed, f"Ray processes listening beyond the loopback interface: {sorted(exposed)}"
