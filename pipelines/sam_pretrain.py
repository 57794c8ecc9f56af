"""Driver-side SAM-2 pre-training for presets that build SAM-2 from scratch (``sam_pretrain``).

Before SALMA training starts, ``ensure_sam_pretrained`` trains the from-scratch SAM-2 of the
configured preset with point and box prompts on the instance masks of the training sources and,
with ``sam_pretrain.video_steps``, its tracker on clips of the video sources
(``salma.sam_pretraining``: what a SAM-2.1 checkpoint gives the real presets), writes it in the
``sam2`` package's checkpoint layout to ``sam_pretrain.out`` and points ``model.sam.checkpoint``
at it, so that the workers load it through the package's strict loader as they would load a
downloaded checkpoint.

The checkpoint is written once and reused: beside it, ``<out>.json`` records what it was trained
from (the SAM-2 architecture, the pre-training settings and a fingerprint of the records), and a
checkpoint whose record disagrees is trained again. A record that does not decode is skipped,
counted and named; more than ``data.max_bad_fraction`` of them stops the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.config import ExperimentConfig, SamPretrainConfig
from pipelines.data import read_mixture
from pipelines.progress import Progress, phase_line
from salma.data.record import SampleRecord

logger = logging.getLogger(__name__)

# Bump when the pre-training code changes what it produces for the same settings and data, so that
# a cached SAM-2 from older code is not reused (2: SAM-2 built alone from the model seed).
PRETRAIN_RECIPE = 2


def ensure_sam_pretrained(cfg: ExperimentConfig, mixture: list[list[SampleRecord]] | None = None) -> ExperimentConfig:
    """``cfg`` with ``model.sam.checkpoint`` set to the pre-trained SAM-2 (trained now when the
    cached one is missing or stale); ``cfg`` unchanged when ``sam_pretrain.enabled`` is false.

    Call it on the driver after the data paths are absolute (``pipelines.train.prepare_data``,
    which passes the records of ``data.sources`` it has already read as ``mixture``; None reads
    them here).
    """
    p = cfg.sam_pretrain
    if not p.enabled:
        return cfg
    out = Path(cfg.absolute(p.out))
    model = cfg.model_config_resolved
    # Sources without masks (VQA, video QA) add no instance; none with masks is an error of
    # ``instance_set``.
    if mixture is None:
        mixture = read_mixture(cfg.data.sources)
    records = [r for source_records in mixture for r in source_records]
    wanted = {
        "recipe": PRETRAIN_RECIPE,
        "sam": model.sam.model_dump(mode="json", exclude={"checkpoint"}),
        "seed": model.seed,
        "settings": p.model_dump(mode="json", exclude={"enabled", "out", "log_every"}),
        "records": _fingerprint(records),
    }
    meta_path = out.with_name(out.name + ".json")
    if out.is_file() and meta_path.is_file() and _read_json(meta_path).get("trained_from") == wanted:
        logger.info("SAM-2 pre-training: reusing %s", out)
        phase_line("SAM-2 pre-training", f"reusing {out}")
    else:
        _pretrain(cfg, p, records, out, meta_path, wanted)
    sam = {**cfg.model.get("sam", {}), "checkpoint": str(out)}
    return cfg.model_copy(update={"model": {**cfg.model, "sam": sam}})


def _pretrain(
    cfg: ExperimentConfig, p: SamPretrainConfig, records: list, out: Path, meta_path: Path, wanted: dict[str, Any]
) -> None:
    import torch

    from salma.builder import build_sam
    from salma.data.errors import BadRecordError
    from salma.image_transforms import to_normalized_tensor
    from salma.sam_pretraining import (
        evaluate_prompts,
        evaluate_tracking,
        instance_set,
        pretrain_sam,
        save_sam2_checkpoint,
        track_set,
    )

    model_cfg = cfg.model_config_resolved
    started = time.perf_counter()
    torch.manual_seed(model_cfg.seed)  # the from-scratch initialisation, from the model's seed
    sam = build_sam(model_cfg.sam, load_checkpoint=False)
    bad: dict[str, str] = {}  # path -> reason: a record failing in both readers counts once

    def on_bad(err: BadRecordError) -> None:
        bad.setdefault(str(err.path), err.reason)

    data = instance_set(records, image_size=sam.image_size, frames_per_video=p.frames_per_video, on_bad=on_bad)
    tracks = None
    if p.video_steps:
        tracks = track_set(records, image_size=sam.image_size, min_frames=p.clip_frames, on_bad=on_bad)
        if not tracks.windows(p.clip_frames):
            raise ValueError(
                f"sam_pretrain.video_steps={p.video_steps} but no video source of data.sources has a "
                f"track of sam_pretrain.clip_frames={p.clip_frames} frames; set video_steps: 0 for images only"
            )
    skipped = len(bad)
    if skipped:
        worst = ", ".join(f"{path} ({reason})" for path, reason in list(bad.items())[:5])
        logger.warning("SAM-2 pre-training skipped %d of %d records: %s", skipped, len(records), worst)
        if skipped / len(records) > cfg.data.max_bad_fraction:
            raise ValueError(
                f"SAM-2 pre-training: {skipped} of {len(records)} records do not decode, more than "
                f"data.max_bad_fraction={cfg.data.max_bad_fraction}; worst: {worst}"
            )
    logger.info(
        "SAM-2 pre-training from scratch: %d masks on %d frames, %d image steps, %d video steps "
        "(%d tracks) -> %s",
        len(data.masks), len(data.images), p.steps, p.video_steps, len(tracks.tracks) if tracks else 0, out,
    )
    with _threads(p.threads):
        if p.processes > 1:
            rows = _pretrain_in_processes(model_cfg.sam, model_cfg.seed, p, data, tracks, sam)
        else:
            torch.manual_seed(p.seed)
            progress, show = _progress(p)
            rows = pretrain_sam(sam, data, p.pretrain_options(), normalize=to_normalized_tensor, tracks=tracks, on_log=show)
            progress.close()
        # A sample of the masks is enough to tell a decoder that follows the prompt (scoring
        # all of them cost half a minute in the quickstart).
        scores = evaluate_prompts(sam, data, normalize=to_normalized_tensor, max_masks=SCORED_MASKS)
        if tracks is not None:
            scores["track_iou"] = evaluate_tracking(
                sam, tracks, normalize=to_normalized_tensor, clip_frames=p.clip_frames
            )
    save_sam2_checkpoint(sam, out)
    meta = {
        "trained_from": wanted,
        "seconds": round(time.perf_counter() - started, 1),
        "masks": len(data.masks),
        "frames": len(data.images),
        "skipped_records": skipped,
        "final": rows[-1] if rows else {},
        "train_prompt_iou": scores,
    }
    staging = meta_path.with_name(meta_path.name + ".partial")
    staging.write_text(json.dumps(meta, indent=1))
    staging.replace(meta_path)
    logger.info(
        "SAM-2 pre-training done in %.0f s: IoU on %d of its training masks, %s",
        meta["seconds"], min(SCORED_MASKS, len(data.masks)),
        ", ".join(f"{k.removesuffix('_iou')} {v:.3f}" for k, v in scores.items()),
    )
    for warning in plateau_warnings(scores, p):
        logger.warning("%s", warning)
        phase_line("SAM-2 pre-training", f"warning: {warning}")


def _progress(p: SamPretrainConfig) -> tuple[Progress, Any]:
    """The phase's progress line and the ``on_log`` callback that updates it."""
    progress = Progress("SAM-2 pre-training", total=p.steps + p.video_steps, unit="step")

    def show(row: dict[str, float]) -> None:
        loss = sum(v for k, v in row.items() if k != "step" and not k.endswith("_iou"))
        ious = {k.removesuffix("_iou") + " IoU": v for k, v in row.items() if k.endswith("_iou")}
        progress.update(int(row["step"]), loss=loss, **ious)

    return progress, show


def _pretrain_in_processes(sam_config, model_seed: int, p: SamPretrainConfig, data, tracks, sam) -> list[dict[str, float]]:
    """Train data-parallel in ``p.processes`` spawned processes (spawned, not forked: the driver
    holds Ray's threads) and load rank 0's result into ``sam``; returns the logged rows. Every
    rank builds the same initial SAM-2 from ``model_seed``; a rank that fails stops the others
    and raises here with its traceback."""
    import tempfile

    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="salma-sam-pretrain-") as folder:
        mp.spawn(
            _pretrain_rank,
            args=(p.processes, folder, sam_config, model_seed, p, data, tracks),
            nprocs=p.processes,
            join=True,
        )
        result = torch.load(Path(folder) / RANK0_RESULT, weights_only=True)
    sam.load_state_dict(result["model"])
    return result["rows"]


RANK0_RESULT = "rank0.pt"


def _pretrain_rank(rank: int, world: int, folder: str, sam_config, model_seed: int, p: SamPretrainConfig, data, tracks) -> None:
    """One process of ``_pretrain_in_processes`` (a module-level function: spawn imports it)."""
    import torch
    import torch.distributed as dist

    from salma.builder import build_sam
    from salma.image_transforms import to_normalized_tensor
    from salma.sam_pretraining import pretrain_sam

    if p.threads:
        torch.set_num_threads(p.threads)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        torch.manual_seed(model_seed)
        sam = build_sam(sam_config, load_checkpoint=False)
        torch.manual_seed(p.seed)
        progress, show = _progress(p) if rank == 0 else (None, None)
        rows = pretrain_sam(
            sam, data, p.pretrain_options(), normalize=to_normalized_tensor, tracks=tracks, on_log=show,
            data_parallel=True,
        )
        if rank == 0:
            progress.close()
            torch.save({"model": sam.state_dict(), "rows": rows}, Path(folder) / RANK0_RESULT)
    finally:
        dist.destroy_process_group()


# How many training masks (spread over the set) the closing click and box scores use.
SCORED_MASKS = 256
# Held-in IoU of a prompt type below which the decoder is taken to ignore that prompt: segmenting
# every object whatever the prompt scores about 0.44 on the synthetic data.
FOLLOWS_PROMPT_IOU = 0.6


def plateau_warnings(scores: dict[str, float], p: SamPretrainConfig) -> list[str]:
    """A warning per trained prompt type (clicks unless ``box_probability`` is 1, boxes unless
    it is 0) whose IoU on the training masks says the decoder still ignores the prompt: the
    pre-training ended on its plateau, and SALMA training on it may not learn to localise."""
    trained = [name for name, share in (("click", 1.0 - p.box_probability), ("box", p.box_probability)) if share > 0]
    return [
        f"the decoder does not follow {name} prompts yet (IoU {scores[name + '_iou']:.2f} on its training "
        f"masks): it stopped on its plateau; raise sam_pretrain.steps (now {p.steps})"
        for name in trained
        if scores.get(name + "_iou", 1.0) < FOLLOWS_PROMPT_IOU
    ]


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads (0: leave as is), then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fingerprint(records: list) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(record.to_json().encode())
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        logger.warning("%s is unreadable (%s): the SAM-2 checkpoint beside it is trained again", path, err)
        return {}
