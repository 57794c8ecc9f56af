"""Distributed training: a Ray Train ``TorchTrainer`` with DeepSpeed ZeRO-2 inside each worker.

    python -m pipelines.train --config experiments/X.yaml [key=value ...]
    python -m pipelines.train --resume RUNS/NAME [key=value ...]      (salma train … is the same)

The driver prepares the run folder and the MLflow run, resolves the DeepSpeed setup from the
resources (bf16 + NCCL on GPU, fp32 + gloo on CPU) and starts the trainer. Each worker builds the
model with ``build_salma``, wraps it in DeepSpeed on Ray's process group, resumes from the latest
checkpoint if there is one (a restart after a failure, or ``--resume``), and runs the steps:
the MBA gamma / auxiliary-loss schedules from the global step, ``grad_accum`` micro-batches,
clipping, AdamW with warm-up + cosine. Every ``checkpoint_every`` steps all ranks write their
part of the checkpoint and call ``ray.train.report`` (a barrier). ``train.num_workers: 0`` runs the
same loop in the calling process (Ray Train's local mode) for tests and debugging.

Determinism: each rank's data stream is a pure function of the config and resumes from the data
position its checkpoint part stores, and the torch RNG is re-seeded from (seed, step,
micro-batch, rank) before every forward pass (the mask losses sample points), so a run resumed from
a checkpoint replays exactly the steps an uninterrupted run would have taken: on CPU, with the same
number of workers, the final weights are bit-identical (tests/pipelines/test_train_ray.py). On GPU,
non-deterministic kernels and NCCL reduction order make it close but not bit-exact.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train.torch import TorchConfig, TorchTrainer

from pipelines import console, tracking
from pipelines.checkpoint import (
    CheckpointInfo,
    checkpoint_name,
    newest_valid_checkpoint,
    prepare_resume,
    prune_local,
    publish_local,
    restore_engine,
    stage_checkpoint,
)
from pipelines.config import ExperimentConfig, load_experiment
from pipelines.config_errors import ConfigError
from pipelines.data import ensure_synthetic, read_mixture, worker_batches
from pipelines.deepspeed_config import DistributedSetup, deepspeed_config, resolve_distributed_setup
from pipelines.deepspeed_ops import use_environment_extensions
from pipelines.fault_injection import ENV_VAR as FAULT_ENV_VAR
from pipelines.fault_injection import FaultInjection
from pipelines.held_out import HeldOutBatch
from pipelines.local_ray import init_ray
from pipelines.lr_schedule import parameter_groups, warmup_cosine_scheduler
from pipelines.progress import Progress, TrainProgressRelay, post_progress
from pipelines.run_folder import RunFolder
from pipelines.sam_pretrain import ensure_sam_pretrained

logger = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TrainResult:
    """``run_dir``: the run folder; ``checkpoint_path``: its final checkpoint; ``run_id``: the
    MLflow run (None untracked); ``metrics``: those reported with the final checkpoint."""

    run_dir: str
    checkpoint_path: str | None
    run_id: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    # Seconds per phase: "prepare" (data checks, SAM-2 pre-training when it runs) and "train".
    phase_seconds: dict[str, float] = field(default_factory=dict)


# ====================================================================================== driver
def train(
    cfg: ExperimentConfig,
    *,
    resume: str | None = None,
    callbacks: list[ray.train.UserCallback] | None = None,
    tags: dict[str, str] | None = None,
) -> TrainResult:
    """Train ``cfg`` to ``train.max_steps``; ``resume`` continues the run in that run folder.

    ``callbacks`` go to Ray Train's ``RunConfig`` (``pipelines.tune`` passes Tune's report
    callback); ``tags`` are added to a new MLflow run (a sweep's ``mlflow.parentRunId``)."""
    started = time.perf_counter()
    cfg = prepare_data(cfg)
    prepared = time.perf_counter()
    run = RunFolder.existing(resume) if resume else RunFolder.new(cfg)
    if cfg.train.num_workers == 0 and run.local_path is None:
        raise ValueError(f"train.num_workers=0 (local mode) needs a local run folder, not {run.path}")
    started_here = not ray.is_initialized()
    if started_here:
        # $RAY_ADDRESS when set (a job on a cluster), else a local Ray; local mode reads its data
        # with Ray Data too. Now, before the SIGTERM handler below is installed, so that it is the
        # last one: connecting later (in local mode, Ray Data's own ray.init) installs Ray's
        # core-worker C++ handler over it, which prints a stack and usually passes the signal on,
        # but once left the process dead with its run RUNNING.
        init_ray(**console.ray_init_options())
    setup = resolve_distributed_setup(cfg.train, gpus_available=_gpus_available(cfg, started_here=started_here))
    # A resumed local run starts from its newest checkpoint that verifies (damaged ones set aside).
    latest = prepare_resume(run.local_path) if resume and run.local_path else None
    previous = run.run_info()
    tracker = tracking.start_run(
        cfg,
        run_name=run.name,
        resume_run_id=previous.get("mlflow_run_id"),
        tags={"experiment": cfg.name, "preset": cfg.model_config_resolved.preset, "run_dir": run.path, **(tags or {})},
    )
    tracking_uri = getattr(tracker, "tracking_uri", None)
    relay = None
    with _sigterm_as_interrupt():
        try:
            run.record_attempt(cfg, mlflow_run_id=tracker.run_id, tracking_uri=tracking_uri)
            _log_run_start(tracker, cfg, run, resumed=resume is not None)
            relay = _progress_relay(cfg, latest)
            result = _trainer(
                cfg, run, setup, tracking_uri=tracking_uri, mlflow_run_id=tracker.run_id, callbacks=callbacks,
                progress=relay.handle,
            ).fit()
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM (_sigterm_as_interrupt), an exit request
            tracker.finish("KILLED")
            raise
        except BaseException:
            tracker.finish("FAILED")
            raise
        finally:
            if relay is not None:
                relay.close()
    metrics = dict(result.metrics or {})
    final = {f"final/{k}": v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))}
    tracker.log_metrics(final, step=int(metrics.get("step", cfg.train.max_steps)))
    tracker.finish("FINISHED")
    checkpoint = f"{run.path}/{os.path.basename(result.checkpoint.path)}" if result.checkpoint else None
    phases = {"prepare": prepared - started, "train": time.perf_counter() - prepared}
    return TrainResult(run_dir=run.path, checkpoint_path=checkpoint, run_id=tracker.run_id, metrics=metrics,
                       phase_seconds=phases)


class Terminated(KeyboardInterrupt):
    """SIGTERM reached the driver (``kill``, a job scheduler, a container stop)."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Make SIGTERM end the driver the way Ctrl-C does: ``Terminated`` (a ``KeyboardInterrupt``)
    is raised in the main thread, so the MLflow run ends KILLED and Ray shuts down on the way out,
    instead of the process vanishing with the run left RUNNING. When ``ray.init`` runs later in
    this process (Ray Data starting Ray in local mode), it installs its own SIGTERM handler,
    which raises ``SystemExit``: ``train`` ends the run KILLED for that too. Only the main thread
    can install a handler (a Tune trial runs ``train`` elsewhere: its own driver handles signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Terminated(f"received signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _progress_relay(cfg: ExperimentConfig, latest: CheckpointInfo | None) -> TrainProgressRelay:
    """The driver's training line (``pipelines.progress``), starting at the step a resumed run
    continues from."""
    progress = Progress("train", total=cfg.train.max_steps, unit="step", initial=latest.step if latest else 0)
    return TrainProgressRelay(progress, use_ray=cfg.train.num_workers > 0)


def prepare_data(cfg: ExperimentConfig) -> ExperimentConfig:
    """Driver-side, before any worker starts: make the data paths absolute (workers change
    directory), write the synthetic datasets when ``data.synthetic.enabled`` and they are not
    there yet, fail fast if a source does not parse or is empty, and pre-train SAM-2 when
    ``sam_pretrain.enabled`` (setting ``model.sam.checkpoint``)."""
    data = cfg.data
    sources = [s.model_copy(update={"root": cfg.absolute(s.root)}) for s in data.sources]
    eval_sources = [s.model_copy(update={"root": cfg.absolute(s.root)}) for s in data.eval_sources]
    synthetic = data.synthetic.model_copy(update={"out": cfg.absolute(data.synthetic.out)})
    data = data.model_copy(update={"sources": sources, "eval_sources": eval_sources, "synthetic": synthetic})
    sam_pretrain = cfg.sam_pretrain.model_copy(update={"out": cfg.absolute(cfg.sam_pretrain.out)})
    cfg = cfg.model_copy(update={
        "data": data, "workdir": cfg.absolute(cfg.workdir), "sam_pretrain": sam_pretrain, "model": _local_init_from(cfg),
    })
    if not data.sources:
        raise ConfigError(
            "no training data: data.sources is empty; pass an experiment with --config "
            "(experiments/quickstart.yaml trains on the synthetic data, experiments/finetune_own_data.yaml "
            "on a folder of your own) or set data.sources=[{name: ..., format: ..., root: ...}]"
        )
    ensure_synthetic(cfg)
    mixture = read_mixture(data.sources)  # fails fast: a source that does not parse or has no records
    return ensure_sam_pretrained(cfg, mixture)


def _local_init_from(cfg: ExperimentConfig) -> dict[str, Any]:
    """``cfg.model`` with a ``model.init_from`` that names a folder under the launch directory made
    absolute (workers change directory); a hub id (``owner/name`` with no such folder) stays as
    it is."""
    init_from = cfg.model.get("init_from")
    if not init_from or not Path(init_from).expanduser().is_dir():
        return cfg.model
    return {**cfg.model, "init_from": cfg.absolute(init_from)}


def _gpus_available(cfg: ExperimentConfig, *, started_here: bool) -> bool:
    """This process's CUDA in local mode, else the cluster's GPUs (after the CPU budget check;
    ``started_here``: ``train`` started or joined Ray itself)."""
    if cfg.train.num_workers == 0:
        return torch.cuda.is_available()
    _check_cpu_budget(cfg, local=started_here and not os.environ.get("RAY_ADDRESS"))
    return ray.cluster_resources().get("GPU", 0) > 0


def _check_cpu_budget(cfg: ExperimentConfig, *, local: bool) -> None:
    """Each worker decodes its data in its own Ray Data actor pool beside it: if the workers and
    those actors need more CPUs than the cluster has, the actors never start and training waits
    forever. Fail fast on a local Ray (it cannot grow); only warn on a cluster, whose autoscaler
    may still add nodes."""
    total = ray.cluster_resources().get("CPU", 0.0)
    t, d = cfg.train, cfg.data
    needed = t.num_workers * (t.cpus_per_worker + d.encode_actors * d.cpus_per_task)
    if total >= needed:
        return
    message = (
        f"the Ray cluster has {total:g} CPUs, but {t.num_workers} train workers x "
        f"(train.cpus_per_worker={t.cpus_per_worker:g} + data.encode_actors={d.encode_actors} x "
        f"data.cpus_per_task={d.cpus_per_task:g} for decoding) need {needed:g}: lower "
        "train.cpus_per_worker or data.cpus_per_task (fractions are fine), or train.num_workers"
    )
    if local:
        raise ConfigError(message)
    logger.warning(message)


def _log_run_start(tracker: tracking.Tracker, cfg: ExperimentConfig, run: RunFolder, *, resumed: bool) -> None:
    resolved = cfg.resolved()
    tracker.log_params(tracking.flatten_params(resolved))
    tracker.set_tags({**tracking.system_tags(REPO_DIR), "salma.resumed": str(resumed).lower()})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.yaml")
        Path(path).write_text(run.read_text("config.yaml"))
        tracker.log_artifact(path)


def _trainer(
    cfg: ExperimentConfig,
    run: RunFolder,
    setup: DistributedSetup,
    *,
    tracking_uri: str | None,
    mlflow_run_id: str | None,
    callbacks: list[ray.train.UserCallback] | None = None,
    progress: Any = None,
) -> TorchTrainer:
    t = cfg.train
    loop_config = {
        "experiment": cfg.model_dump(mode="json"),
        "setup": asdict(setup),
        "run_dir": run.path,
        "local_run_dir": run.local_path,
        "tracking_uri": tracking_uri,
        "mlflow_run_id": mlflow_run_id,
        "progress": progress,  # where rank 0 posts its step values (pipelines.progress)
    }
    fault = os.environ.get(FAULT_ENV_VAR)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=setup.backend),
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=setup.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=run.name,
            storage_path=run.storage_path,
            failure_config=ray.train.FailureConfig(
                max_failures=t.max_failures, controller_failure_limit=t.startup_retries
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            worker_runtime_env={"env_vars": {FAULT_ENV_VAR: fault}} if fault else None,
            callbacks=callbacks,
        ),
    )


# ====================================================================================== worker
@dataclass
class _Worker:
    """Everything one worker's loop needs, built once by ``_setup_worker``."""

    cfg: ExperimentConfig
    setup: DistributedSetup
    rank: int
    world_size: int
    engine: Any
    scheduler: Any
    trainable: list[str]
    reshaped_scalars: list[str]
    tokenizer: Any  # the model's, from build_salma: the data and the held-out batch encode with it
    tracker: tracking.Tracker
    staging_root: str
    local_run_dir: str | None
    fault: FaultInjection | None
    held_out: HeldOutBatch | None = None
    progress: Any = None

    @property
    def local_mode(self) -> bool:
        return self.cfg.train.num_workers == 0


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The function Ray Train runs in every worker (or in-process with ``num_workers: 0``)."""
    cfg = ExperimentConfig.model_validate(loop_config["experiment"])
    setup = DistributedSetup(**loop_config["setup"])
    context = ray.train.get_context()
    with _process_group(setup):
        worker = _setup_worker(cfg, setup, loop_config, rank=context.get_world_rank(), world_size=context.get_world_size())
        start_step, data_position = _restore(worker, loop_config)
        batches = worker_batches(
            cfg, rank=worker.rank, world_size=worker.world_size, start_step=start_step,
            tokenizer=worker.tokenizer, start_position=data_position,
        )
        try:
            _run_steps(worker, batches, start_step)
        except BaseException:
            # The skip report matters most when the bad-record threshold (or anything else)
            # stopped the run: write it, then let the original error through.
            _write_bad_records(worker, batches, failing=True)
            raise
        else:
            _write_bad_records(worker, batches)
        finally:
            batches.close()  # stop the Ray Data stream while Ray is still up, not at exit
    # Every staged part has been published; another rank may still be removing its own.
    with suppress(OSError):  # not empty (another rank), or already gone
        os.rmdir(worker.staging_root)


@contextmanager
def _process_group(setup: DistributedSetup) -> Iterator[None]:
    """Ray has set up torch.distributed in its workers. In local mode, make a one-process group so
    that DeepSpeed runs the same code path, and tear it down with DeepSpeed's own
    ``destroy_process_group``, which also forgets the groups DeepSpeed derived from it (a second
    local run in the same process would otherwise reuse stale ones)."""
    if dist.is_initialized():
        yield
        return
    os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed refuses to start without it
    dist.init_process_group(setup.backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        import deepspeed.comm

        if deepspeed.comm.is_initialized():
            deepspeed.comm.destroy_process_group()
        else:
            dist.destroy_process_group()


def _setup_worker(
    cfg: ExperimentConfig, setup: DistributedSetup, loop_config: dict[str, Any], *, rank: int, world_size: int
) -> _Worker:
    engine, scheduler, trainable, reshaped, tokenizer = build_engine(cfg, setup)
    local_run_dir = loop_config["local_run_dir"]
    if cfg.train.num_workers == 0:
        staging_root = os.path.join(local_run_dir, ".staging")
    else:
        staging_root = os.path.join(tempfile.gettempdir(), "salma-staging", os.path.basename(loop_config["run_dir"]))
    os.makedirs(staging_root, exist_ok=True)
    tracker = tracking.worker_tracker(
        tracking_uri=loop_config["tracking_uri"], run_id=loop_config["mlflow_run_id"], rank=rank
    )
    tracker.set_tags(
        tracking.hardware_tags(
            world_size=world_size, backend=setup.backend, precision=setup.precision, use_gpu=setup.use_gpu
        )
    )
    return _Worker(
        cfg=cfg, setup=setup, rank=rank, world_size=world_size, engine=engine, scheduler=scheduler,
        trainable=trainable, reshaped_scalars=reshaped, tokenizer=tokenizer, tracker=tracker,
        staging_root=staging_root, local_run_dir=local_run_dir, fault=FaultInjection.from_env(),
        held_out=HeldOutBatch.from_config(cfg, tokenizer=tokenizer),
        progress=loop_config.get("progress") if rank == 0 else None,
    )


class TrainEngine(NamedTuple):
    """What ``build_engine`` returns. The engine wraps the module only; the tokenizer
    ``build_salma`` built it with stays here, with the worker (the resolved model config is
    ``cfg.model_config_resolved``)."""

    engine: Any
    scheduler: Any
    trainable: list[str]  # the names of the trained parameters
    reshaped_scalars: list[str]  # 0-dim parameters stored as 1-element vectors (``_vectorise_scalar_parameters``)
    tokenizer: Any


def build_engine(cfg: ExperimentConfig, setup: DistributedSetup) -> TrainEngine:
    """``build_salma`` → DeepSpeed engine with AdamW and the warm-up + cosine schedule."""
    use_environment_extensions()  # before DeepSpeed loads a compiled op: the install's build
    import deepspeed

    from salma.builder import build_salma

    if setup.use_gpu:
        torch.cuda.set_device(ray.train.torch.get_device())
    built = build_salma(cfg.model_config_resolved)
    model = built.model
    reshaped = _vectorise_scalar_parameters(model)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=parameter_groups(
            [(n, p) for n, p in model.named_parameters() if p.requires_grad],
            lr=cfg.train.lr, multipliers=cfg.train.lr_multipliers,
        ),
        config=deepspeed_config(cfg.train, setup),
        lr_scheduler=lambda optimizer: warmup_cosine_scheduler(
            optimizer, total_steps=cfg.train.max_steps, warmup_fraction=cfg.train.warmup_fraction
        ),
    )
    engine.train()
    return TrainEngine(engine, scheduler, trainable, reshaped, built.tokenizer)


def _learning_rates(scheduler: Any) -> dict[str, float]:
    """``{"lr": base rate, "lr/<prefix>": rate of each ``train.lr_multipliers`` group}`` now."""
    groups = scheduler.optimizer.param_groups
    return {
        ("lr/" + group["prefix"] if group.get("prefix") else "lr"): rate
        for group, rate in zip(groups, scheduler.get_last_lr())
    }


def _vectorise_scalar_parameters(model: torch.nn.Module) -> list[str]:
    """DeepSpeed 0.19 broadcasts every parameter at start-up through a byte view, which fails on
    0-dim tensors (``mba.gamma``). Store such parameters as 1-element vectors for training; they
    broadcast against the same operands, and ``pipelines.checkpoint.load_model_state`` gives them
    back their own shape."""
    names = []
    for name, param in model.named_parameters():
        if param.dim() == 0:
            param.data = param.data.reshape(1)
            names.append(name)
    return names


def _restore(worker: _Worker, loop_config: dict[str, Any]) -> tuple[int, int | None]:
    """Load the checkpoint to resume from, if any; returns the global step to start at and this
    rank's data position (None: start of the data)."""
    # Staged parts a killed attempt of this rank left behind are never used: clear them.
    for pattern in (f"*.rank{worker.rank}", f"*.rank{worker.rank}.partial"):
        for stale in Path(worker.staging_root).glob(pattern):
            shutil.rmtree(stale)
    checkpoint = ray.train.get_checkpoint()
    kwargs = {"world_size": worker.world_size, "trainable_parameters": worker.trainable}
    run_dir = loop_config["local_run_dir"]
    if run_dir and os.path.isdir(run_dir):
        # The run folder is on this machine: the newest checkpoint in it that verifies, which
        # may be newer than Ray's latest (see newest_valid_checkpoint). Every rank reads the
        # same folders, so all choose the same one.
        found = newest_valid_checkpoint(run_dir, checkpoint.path if checkpoint else None)
        if found is None:
            return 0, None
        info = restore_engine(worker.engine, found.path, **kwargs)
    elif checkpoint is not None:  # storage this worker cannot list (an object store): Ray's
        with checkpoint.as_directory() as folder:
            info = restore_engine(worker.engine, folder, **kwargs)
    else:
        return 0, None
    logger.info("rank %d resumed from %s at step %d", worker.rank, info.path, info.step)
    return info.step, int(info.rank_states[worker.rank]["data_position"])


def _run_steps(worker: _Worker, batches: Iterator, start_step: int) -> None:
    t = worker.cfg.train
    window = _MetricWindow()
    throughput = _Throughput()
    dtype = torch.bfloat16 if worker.setup.precision == "bf16" else None
    for step in range(start_step, t.max_steps):
        if worker.fault:
            worker.fault.maybe_fire(phase="step", step=step, rank=worker.rank, before=_wait_for_commit)
        begin = time.perf_counter()
        rates = _learning_rates(worker.scheduler)
        lr = rates.get("lr", float("nan"))
        schedules = worker.engine.module.set_schedule(step, t.max_steps)
        losses, data_wait = train_step(worker.engine, batches, step=step, cfg=worker.cfg, rank=worker.rank, dtype=dtype)
        seconds = time.perf_counter() - begin
        throughput.step_done()
        samples = t.batch_size_per_worker * t.grad_accum * worker.world_size
        window.add({
            **{f"loss/{k}": v for k, v in losses.items()},
            "samples_per_s": samples / seconds, "data_wait_s": data_wait, "data_wait_fraction": data_wait / seconds,
        })
        done = step + 1
        metrics = {
            "step": done, **rates, **schedules, **window.means(), "steps_per_s": throughput.rate(),
            "data/skipped_records": float(batches.bad.skipped),
        }
        report = done % t.checkpoint_every == 0 or done == t.max_steps
        if report and worker.held_out is not None:
            metrics.update(worker.held_out.losses(worker.engine, dtype=dtype))  # see pipelines.held_out
        if done % t.log_every == 0 or done == t.max_steps:
            worker.tracker.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=done)
            window = _MetricWindow()
            if worker.rank == 0:
                logger.info("step %d/%d loss %.4f lr %.3g", done, t.max_steps, metrics["loss/total"], lr)
                post_progress(worker.progress, metrics)
        if report:
            _checkpoint_and_report(worker, done, metrics, data_position=batches.position)


def train_step(engine, batches: Iterator, *, step: int, cfg: ExperimentConfig, rank: int, dtype) -> tuple[dict[str, float], float]:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean of every loss term
    and the seconds spent waiting for data. DeepSpeed scales the loss by the accumulation and
    steps the optimizer (with clipping) and the LR schedule at the accumulation boundary."""
    sums: dict[str, float] = {}
    data_wait = 0.0
    for micro in range(cfg.train.grad_accum):
        begin = time.perf_counter()
        batch = next(batches)
        data_wait += time.perf_counter() - begin
        torch.manual_seed(step_seed(cfg.train.seed, step, micro, rank))
        terms = engine(batch.to(engine.device, dtype=dtype))
        engine.backward(terms["total"])
        engine.step()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
    return {name: value / cfg.train.grad_accum for name, value in sums.items()}, data_wait


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """The torch RNG seed of one micro-batch (the model samples points for its mask losses)."""
    return (((seed * 1_000_003 + step) * 97 + micro) * 131 + rank) % (2**63)


def _checkpoint_and_report(worker: _Worker, step: int, metrics: dict[str, Any], *, data_position: int) -> None:
    """All ranks stage their part atomically; only complete parts are published and reported."""
    meta = _checkpoint_meta(worker, step) if worker.rank == 0 else None

    def fault_point() -> None:
        if worker.fault:
            worker.fault.maybe_fire(phase="checkpoint", step=step, rank=worker.rank)

    staged = stage_checkpoint(
        worker.engine, worker.staging_root, step=step, rank=worker.rank, save_id=_agree_on_save_id(),
        rank_state={"data_position": data_position}, meta=meta, before_commit=fault_point,
    )
    if meta is not None:
        _log_checkpoint_meta(worker.tracker, step, meta)
    if worker.local_mode:
        published = publish_local(staged, worker.local_run_dir, step)
        prune_local(worker.local_run_dir, worker.cfg.train.keep_checkpoints)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(published))
    else:
        # Ray copies every rank's folder into <run>/<name> and registers the checkpoint only when
        # all ranks have reported, so a rank lost half-way leaves nothing that is ever resumed.
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(staged),
            checkpoint_dir_name=checkpoint_name(step),
            delete_local_checkpoint_after_upload=True,
        )
    if worker.fault and (worker.fault.phase, worker.fault.step) == ("reported", step):
        dist.barrier()  # every rank's report (its upload) has returned
        worker.fault.maybe_fire(phase="reported", step=step, rank=worker.rank)


def _log_checkpoint_meta(tracker: tracking.Tracker, step: int, meta: dict[str, Any]) -> None:
    """Rank 0: the checkpoint's metadata (step, world size, config, trained parameters) as the
    MLflow artifact ``checkpoints/checkpoint_<step>.json``; the weights stay in the run folder."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, f"{checkpoint_name(step)}.json")
        path.write_text(json.dumps(meta, indent=1, default=str))
        tracker.log_artifact(str(path), "checkpoints")


def _agree_on_save_id() -> str:
    """A fresh id for this save, chosen by rank 0 and broadcast (a collective: every rank)."""
    box = [uuid.uuid4().hex]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _checkpoint_meta(worker: _Worker, step: int) -> dict[str, Any]:
    return {
        "step": step,
        "world_size": worker.world_size,
        "config": worker.cfg.resolved(),
        "trainable_parameters": worker.trainable,
        "reshaped_scalars": worker.reshaped_scalars,
        "precision": worker.setup.precision,  # the training dtype, which salma export writes
    }


def _write_bad_records(worker: _Worker, batches, *, failing: bool = False) -> None:
    """Each rank's skipped-record report (file and reason of every unusable record), written at
    the end of a run and when it fails. When ``failing``, an error writing or logging the report
    is logged, not raised, so that it never hides the error that stopped the run."""
    if worker.local_run_dir is None:
        return
    report = Path(worker.cfg.data.bad_report)
    path = Path(worker.local_run_dir, f"{report.stem}.rank{worker.rank}{report.suffix}")
    try:
        batches.bad.write(path)
        worker.tracker.log_artifact(str(path))
    except Exception:
        if not failing:
            raise
        logger.exception("rank %d: could not write its bad-record report %s", worker.rank, path)


def _wait_for_commit() -> None:
    """Before an injected kill: let Ray register the checkpoint reported last, so the restart
    deterministically resumes from it."""
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


class _MetricWindow:
    """Means of the per-step values since the last log."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._count = 0

    def add(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + value
        self._count += 1

    def means(self) -> dict[str, float]:
        return {name: value / max(1, self._count) for name, value in self._sums.items()}


class _Throughput:
    """Optimizer steps per second since the end of this attempt's first step (which pays for
    warm-up: allocation, first-touch, lazy initialisation)."""

    def __init__(self) -> None:
        self._first_end: float | None = None
        self._last_end = 0.0
        self._steps = 0

    def step_done(self) -> None:
        now = time.perf_counter()
        if self._first_end is None:
            self._first_end = now
        else:
            self._steps += 1
            self._last_end = now

    def rate(self) -> float:
        if self._steps == 0:
            return 0.0
        return self._steps / (self._last_end - self._first_end)


# ========================================================================================= CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="salma train", description=__doc__.split("\n\n")[0],
                                     formatter_class=console.DocstringHelp)
    parser.add_argument("--config", help="experiment YAML (deltas on the defaults), e.g. experiments/quickstart.yaml")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in this run folder")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.max_steps=20")
    args = parser.parse_args(argv)
    console.configure()
    if args.resume and not args.config:
        cfg = RunFolder.existing(args.resume).load_config(args.overrides)
    else:
        cfg = load_experiment(args.config, args.overrides)
    result = train(cfg, resume=args.resume)
    print(f"run folder:  {result.run_dir}")
    print(f"checkpoint:  {result.checkpoint_path}")
    if result.run_id:
        print(f"MLflow run:  {result.run_id}")
    print(f"next:        salma export --checkpoint {result.run_dir} --out {result.run_dir}/export")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
