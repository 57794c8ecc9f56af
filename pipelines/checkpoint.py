"""Training checkpoints: written atomically, validated completely before use.

A checkpoint is one folder, ``checkpoint_<step:06d>``::

    salma_checkpoint.json        step, world size, resolved config, trained parameter names (rank 0)
    manifest_rank_<r>.json       rank r's own state (its data position) and the size and SHA-256
                                 of every file it wrote; written last
    deepspeed/latest, deepspeed/state/...   DeepSpeed's own files (engine.save_checkpoint)

Metadata and manifests carry the ``save_id`` all ranks agreed on for this save, so parts of two
attempts at the same step can never pass for one checkpoint.

Each rank first writes its part into a private ``<name>.rank<r>.partial`` staging folder, flushes
every file to disk, writes its manifest, and only then renames the folder to ``<name>.rank<r>``
(an atomic rename): a process killed half-way leaves a ``.partial`` folder that nothing ever
reads. The staged folders are then published — merged by Ray into the run folder, which Ray
registers only once *every* rank has uploaded (``ray.train.report``), or renamed into the run
folder in local mode. A reader trusts nothing: ``read_checkpoint`` checks the metadata and every
rank's manifest against the files (sizes and hashes) and rejects a torn folder with the reason.

The manifest proves that a folder is complete, not who wrote it: anyone who can write the folder
can also rewrite its hashes. So the ``.pt`` files are never unpickled with arbitrary code.
``load_model_state`` and ``restore_engine`` (which replaces DeepSpeed's own checkpoint loader,
``torch.load(weights_only=False)``) read them with ``torch.load(weights_only=True)``: tensors,
builtin containers and scalars, plus exactly the DeepSpeed classes in ``DEEPSPEED_STATE_GLOBALS``,
which hold data and run no code when rebuilt. A file that needs anything else is refused with
``UnsafeCheckpointError`` naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "salma_checkpoint.json"
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"
_MANIFEST = "manifest_rank_{rank}.json"
_NAME = re.compile(r"^checkpoint_(\d{6,})$")


class InvalidCheckpointError(RuntimeError):
    """A checkpoint folder that is incomplete, torn or does not fit the run resuming from it."""


class UnsafeCheckpointError(InvalidCheckpointError):
    """A checkpoint file whose pickle needs a global outside the allow-list (it could run code)."""


def _deepspeed_state_globals() -> list[type]:
    """The non-tensor classes DeepSpeed 0.19's ZeRO-1/2 optimizer states pickle (listed by
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` on a saved checkpoint): a
    dataclass of two ints, the static loss scaler (plain attributes) and an int enum. Rebuilding
    them only sets attributes; none of them runs code from the file."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [fragment_address, LossScaler, DynamicLossScaler, ZeroStageEnum]


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``read_checkpoint`` found in a complete checkpoint."""

    path: str
    step: int
    world_size: int
    config: dict[str, Any]
    rank_states: list[dict[str, Any]]  # per rank, e.g. {"data_position": 123}
    trainable_parameters: list[str]
    reshaped_scalars: list[str]


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:06d}"


# ----------------------------------------------------------------------------------------- write
def stage_checkpoint(
    engine,
    staging_root: str,
    *,
    step: int,
    rank: int,
    save_id: str,
    rank_state: dict[str, Any],
    meta: dict[str, Any] | None,
    before_commit: Callable[[], None] | None = None,
) -> str:
    """Write this rank's part of the checkpoint of ``step`` and return its complete staged folder.

    Every rank must call this (DeepSpeed's save is collective), with the same ``save_id``
    (unique per save, chosen by rank 0 and broadcast). ``rank_state`` is this rank's
    own resume state (its data position); ``meta`` (rank 0 only) is the content of
    ``salma_checkpoint.json``. ``before_commit`` runs after the data files are written
    and before the manifest and the rename (the fault-injection tests kill the process there).
    """
    final = os.path.join(staging_root, f"{checkpoint_name(step)}.rank{rank}")
    partial = final + ".partial"
    for stale in (final, partial):
        if os.path.exists(stale):  # left by an attempt that died at this step
            shutil.rmtree(stale)
    os.makedirs(os.path.join(partial, DEEPSPEED_DIR))
    engine.save_checkpoint(
        os.path.join(partial, DEEPSPEED_DIR), tag=DEEPSPEED_TAG, exclude_frozen_parameters=True
    )
    if meta is not None:
        _write_json(os.path.join(partial, META_FILE), {"format_version": FORMAT_VERSION, "save_id": save_id, **meta})
    if before_commit is not None:
        before_commit()
    files = {rel: _describe(os.path.join(partial, rel)) for rel in _relative_files(partial)}
    for rel in files:
        _fsync_file(os.path.join(partial, rel))
    manifest = {"rank": rank, "save_id": save_id, "state": rank_state, "files": files}
    _write_json(os.path.join(partial, _MANIFEST.format(rank=rank)), manifest)
    _fsync_tree_dirs(partial)
    os.rename(partial, final)
    _fsync_dir(staging_root)
    return final


def publish_local(staged: str, run_dir: str, step: int) -> str:
    """Local mode (one process): move the staged folder into the run folder, atomically."""
    target = os.path.join(run_dir, checkpoint_name(step))
    if os.path.exists(target):
        # Only a torn folder can be here: a complete one would have been resumed from.
        shutil.rmtree(target)
    os.rename(staged, target)
    _fsync_dir(run_dir)
    return target


def prune_local(run_dir: str, keep: int) -> list[str]:
    """Local mode: delete all but the ``keep`` newest checkpoints (Ray does this itself)."""
    found = sorted(_checkpoint_folders(run_dir))
    doomed = [path for _, path in found[:-keep]] if keep > 0 else []
    for path in doomed:
        shutil.rmtree(path)
    return doomed


# ------------------------------------------------------------------------------------------ read
def read_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Validate a checkpoint folder completely (metadata, every rank's manifest, the size and
    SHA-256 of every listed file) and return what it holds; ``InvalidCheckpointError`` if not."""
    path = str(path)
    meta = _read_json(path, META_FILE)
    try:
        if meta["format_version"] != FORMAT_VERSION:
            raise InvalidCheckpointError(f"{path}: checkpoint format {meta['format_version']} is not {FORMAT_VERSION}")
        world_size = int(meta["world_size"])
        rank_states = [_check_rank(path, rank, meta["save_id"]) for rank in range(world_size)]
        return CheckpointInfo(
            path=path,
            step=int(meta["step"]),
            world_size=world_size,
            config=dict(meta["config"]),
            rank_states=rank_states,
            trainable_parameters=list(meta["trainable_parameters"]),
            reshaped_scalars=list(meta["reshaped_scalars"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise InvalidCheckpointError(f"{path}: malformed checkpoint metadata ({err!r})") from None


def _check_rank(path: str, rank: int, save_id: str) -> dict[str, Any]:
    """Check one rank's files against its manifest; returns the rank's state."""
    manifest = _read_json(path, _MANIFEST.format(rank=rank))
    if manifest["save_id"] != save_id:
        raise InvalidCheckpointError(f"{path}: rank {rank}'s part belongs to another save of this step")
    for rel, expected in manifest["files"].items():
        file = os.path.join(path, rel)
        if not os.path.isfile(file):
            raise InvalidCheckpointError(f"{path}: {rel} (rank {rank}) is missing")
        if os.path.getsize(file) != expected["size"] or _sha256(file) != expected["sha256"]:
            raise InvalidCheckpointError(f"{path}: {rel} (rank {rank}) is truncated or altered")
    return dict(manifest["state"])


def find_latest_checkpoint(run_dir: str | os.PathLike) -> CheckpointInfo | None:
    """The newest *valid* checkpoint of a local run folder; torn ones are skipped with a warning."""
    for _, path in sorted(_checkpoint_folders(str(run_dir)), reverse=True):
        try:
            return read_checkpoint(path)
        except InvalidCheckpointError as err:
            logger.warning("skipping checkpoint: %s", err)
    return None


# Ray Train 2.60's record of the checkpoints of a run (in the run folder), read on a relaunch.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def prepare_resume(run_dir: str | os.PathLike) -> CheckpointInfo | None:
    """Before a local run folder is resumed: return its newest checkpoint that verifies, and make
    sure nothing newer gets in the way.

    Checkpoint folders newer than that one are damaged (truncated, altered, half-written):
    they are renamed ``<name>.invalid`` (kept for inspection, never read again). Ray Train's
    own record of the run (``RAY_SNAPSHOT``) is renamed ``<file>.stale`` when it names a
    checkpoint that is gone or damaged: Ray would otherwise refuse to start
    (``CheckpointManagerInitializationError``) or offer the workers the damaged checkpoint. Ray
    then starts a fresh record; the workers resume from the returned checkpoint all the same
    (``newest_valid_checkpoint``), and checkpoints older than the resume are no longer pruned by
    Ray (``train.keep_checkpoints`` counts only the new ones)."""
    run_dir = str(run_dir)
    latest = find_latest_checkpoint(run_dir)
    latest_step = latest.step if latest else -1
    for step, path in sorted(_checkpoint_folders(run_dir)):
        if step > latest_step:
            aside = _unused_name(path + ".invalid")
            logger.warning("%s does not verify and is newer than the checkpoint resumed from: moved to %s", path, aside)
            os.rename(path, aside)
    snapshot = os.path.join(run_dir, RAY_SNAPSHOT)
    named = _snapshot_checkpoints(snapshot)
    present = {os.path.basename(path) for _, path in _checkpoint_folders(run_dir)}
    stale = sorted(name for name in named if name not in present)
    if stale:
        aside = _unused_name(snapshot + ".stale")
        logger.warning(
            "Ray's record of this run names checkpoints that are gone or damaged (%s): moved to %s; "
            "resuming from %s", ", ".join(stale), aside, latest.path if latest else "the start",
        )
        os.rename(snapshot, aside)
    return latest


def newest_valid_checkpoint(run_dir: str, offered: str | None) -> CheckpointInfo | None:
    """In a worker (re)starting on a local run folder: the newest checkpoint of ``run_dir`` that
    verifies. Ray offers its latest registered one (``offered``); the folder may hold a newer
    complete one (every rank had written its part when a worker was lost, before Ray registered
    it) or Ray's may be damaged since: the folder, verified, decides."""
    found = find_latest_checkpoint(run_dir)
    chosen = os.path.basename(found.path) if found else None
    if offered is not None and os.path.basename(offered.rstrip("/")) != chosen:
        logger.warning("Ray offered checkpoint %s; resuming from %s, the newest that verifies", offered, chosen)
    return found


def restore_engine(engine, path: str, *, world_size: int, trainable_parameters: list[str]) -> CheckpointInfo:
    """Validate ``path`` and load model, optimizer and scheduler state into a DeepSpeed engine."""
    info = read_checkpoint(path)
    if info.world_size != world_size:
        raise InvalidCheckpointError(
            f"{path} was written by {info.world_size} workers and this run has {world_size}: ZeRO "
            f"partitions the optimizer state per worker, so resume with train.num_workers={info.world_size}"
        )
    if info.trainable_parameters != trainable_parameters:
        changed = sorted(set(info.trainable_parameters) ^ set(trainable_parameters))
        raise InvalidCheckpointError(
            f"{path}: the trained parameters differ from this model's ({changed[:5]}...); the model "
            "or freezing config changed since the checkpoint was written"
        )
    _use_safe_loader(engine)
    # Frozen parameters are not in the checkpoint (exclude_frozen_parameters): the builder already
    # loaded them from the pretrained weights, and the check above proves nothing else is missing.
    load_path, _ = engine.load_checkpoint(
        os.path.join(path, DEEPSPEED_DIR), tag=DEEPSPEED_TAG, load_module_strict=False
    )
    if load_path is None:
        raise InvalidCheckpointError(f"{path}: DeepSpeed could not load {DEEPSPEED_DIR}/{DEEPSPEED_TAG}")
    return info


def load_model_state(path: str | os.PathLike) -> dict[str, Any]:
    """The trained weights of a checkpoint as a ``state_dict`` in the model's own shapes (for
    export and evaluation). Frozen weights are not included: they come from the pretrained model."""
    info = read_checkpoint(path)
    states = os.path.join(str(path), DEEPSPEED_DIR, DEEPSPEED_TAG, "mp_rank_00_model_states.pt")
    module = safe_torch_load(states)["module"]
    for name in info.reshaped_scalars:
        module[name] = module[name].reshape(())
    return module


def safe_torch_load(file: str, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` admitting only DeepSpeed's data classes (module doc);
    ``UnsafeCheckpointError`` naming ``file`` for a pickle that asks for anything else."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_deepspeed_state_globals()):
            return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises allow-listing the global; keep only what the file asked for.
        found = re.search(r"WeightsUnpickler error: (.*?)(?:\. |\.?$)", str(err), re.MULTILINE)
        reason = found.group(1) if found else str(err).strip().splitlines()[0]
        raise UnsafeCheckpointError(
            f"{file}: refused to unpickle ({reason}): a SALMA checkpoint holds only tensors, "
            "containers and DeepSpeed's state classes, and anything else could run code. Resume "
            "or export only checkpoints that your own runs wrote"
        ) from None


def _use_safe_loader(engine) -> None:
    """Make DeepSpeed read this engine's checkpoint files through ``safe_torch_load``: its
    ``TorchCheckpointEngine.load(path, map_location)`` calls ``torch.load(weights_only=False)``,
    and every model, optimizer and ZeRO-shard load of ``engine.load_checkpoint`` goes through
    it, so the instance's ``load`` is replaced. Other checkpoint engines (DeepSpeed's fast or
    decoupled writers, DataStates) are refused: they have loaders of their own."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    current = engine.checkpoint_engine
    if type(current) is not TorchCheckpointEngine:
        raise InvalidCheckpointError(
            f"DeepSpeed's checkpoint engine is {type(current).__name__}; SALMA resumes only through "
            "the default torch engine, whose loads it restricts: remove checkpoint.writer and "
            "datastates from the DeepSpeed config"
        )
    current.load = safe_torch_load


# --------------------------------------------------------------------------------------- helpers
def _checkpoint_folders(run_dir: str) -> list[tuple[int, str]]:
    if not os.path.isdir(run_dir):
        return []
    out = []
    for entry in os.scandir(run_dir):
        match = _NAME.match(entry.name)
        if match and entry.is_dir():
            out.append((int(match.group(1)), entry.path))
    return out


def _snapshot_checkpoints(snapshot: str) -> set[str]:
    """The checkpoint folder names a Ray Train run snapshot refers to (empty if there is none).
    A snapshot this code cannot parse is left to Ray, which reports its own error."""
    try:
        with open(snapshot) as f:
            state = json.load(f)
        results = list(state.get("checkpoint_results") or [])
        if state.get("latest_checkpoint_result"):
            results.append(state["latest_checkpoint_result"])
        return {r["checkpoint_dir_name"] for r in results if isinstance(r, dict) and "checkpoint_dir_name" in r}
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, AttributeError, TypeError) as err:
        logger.warning("could not read Ray's run snapshot %s (%r); leaving it to Ray", snapshot, err)
        return set()


def _unused_name(path: str) -> str:
    candidate, n = path, 1
    while os.path.exists(candidate):
        n += 1
        candidate = f"{path}{n}"
    return candidate


def _relative_files(root: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def _describe(file: str) -> dict[str, Any]:
    return {"size": os.path.getsize(file), "sha256": _sha256(file)}


def _sha256(file: str) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(folder: str, name: str) -> dict[str, Any]:
    file = os.path.join(folder, name)
    try:
        with open(file) as f:
            return json.load(f)
    except FileNotFoundError:
        raise InvalidCheckpointError(f"{folder}: {name} is missing (incomplete checkpoint)") from None
    except json.JSONDecodeError as err:
        raise InvalidCheckpointError(f"{folder}: {name} is not valid JSON ({err})") from None


def _write_json(file: str, data: dict[str, Any]) -> None:
    with open(file, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(file: str) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    # Makes a rename durable; some filesystems do not support fsync on a directory.
    try:
        _fsync_file(folder)
    except OSError:
        pass


def _fsync_tree_dirs(root: str) -> None:
    for folder, _, _ in os.walk(root):
        _fsync_dir(folder)
