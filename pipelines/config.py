"""Typed experiment configuration: the model (deltas on a preset), data, training, tracking, eval.

An experiment YAML holds only deltas from these defaults. Unknown keys anywhere are errors, and
``key=value`` command-line overrides use dotted paths (``train.max_steps=20``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, Strict, ValidationError, field_validator, model_validator

from pipelines.config_errors import ConfigError, describe_validation_error
from pipelines.config_yaml import parse_config_text, read_config_file
from salma.config import ClutterCounts, PretrainOptions, SalmaConfig, SamplingOptions, StrictModel, resolve_model_config


class SourceConfig(StrictModel):
    """One dataset in the mixture. ``format`` is a reader of ``salma.data.sources``; ``repeats``
    (integer, applied in the index) and ``weight`` (sampling ratio between sources) shape it."""

    name: str
    format: str
    root: str
    split: str = "train"
    repeats: int = 1
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("repeats")
    @classmethod
    def _repeats(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"repeats={v} must be >= 1 (drop the source to exclude it)")
        return v

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        from salma.data.sources import source_format  # registers the built-in formats

        source_format(v)  # a ValueError naming the registered formats
        return v


class SyntheticConfig(StrictModel):
    """Generate the synthetic datasets before the job starts (the embedded default)."""

    enabled: bool = False
    out: str = "data/synthetic"
    size: Literal["small", "medium"] = "small"
    seed: int = 0
    clutter: ClutterCounts = Field(default_factory=ClutterCounts)


class DataConfig(SamplingOptions):
    """The data mixture and how it is read; the example sampling settings (``num_frames``,
    ``frame_sampling``, ``max_objects``) are ``SamplingOptions``'."""

    sources: list[SourceConfig] = Field(default_factory=list)
    eval_sources: list[SourceConfig] = Field(default_factory=list)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    max_bad_fraction: float = 0.05
    bad_report: str = "bad_records.json"
    cpus_per_task: float = 0.5  # per Ray Data decode actor; keep CPUs free beside the train workers
    encode_actors: int = 1  # Ray Data decode actors per train worker
    # Deal each global micro-batch so that every rank gets an equal share of its estimated cost
    # (videos, objects): the all-reduce waits for the slowest rank (pipelines.data.deal_balanced).
    # Off by default: it moves examples between ranks, and with them the in-rank contrastive
    # negatives and each example's random frames and points, so a run's scores move with it (by
    # a few points either way in the quickstart, not separated from the spread over data
    # orders; docs/experiments/2026-12-07-quickstart-time-budget.md). The quickstart turns it on.
    balance_ranks: bool = False
    seed: int = 0

    @field_validator("encode_actors")
    @classmethod
    def _actors(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"data.encode_actors={v} must be >= 1 (decode actors per train worker)")
        return v

    @field_validator("cpus_per_task")
    @classmethod
    def _cpus(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"data.cpus_per_task={v} must be > 0 (fractions such as 0.5 are fine)")
        return v

    @field_validator("max_bad_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"data.max_bad_fraction={v} must lie in [0, 1]")
        return v


class TrainConfig(StrictModel):
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    torch_adam: bool | None = None  # None: torch's AdamW on CPU, DeepSpeed's FusedAdam on GPU
    zero_stage: int = 2
    batch_size_per_worker: int = 2
    grad_accum: int = 1
    max_steps: int = 100
    lr: float = 4e-5
    # Parameter-name prefix -> multiplier of ``lr`` (longest prefix wins), e.g.
    # {"sam.sam.sam_mask_decoder": 0.3}; a prefix that matches no trained parameter is an error.
    lr_multipliers: dict[str, float] = {}
    weight_decay: float = 0.05
    betas: Annotated[tuple[float, float], Strict(False)] = (0.9, 0.999)  # YAML gives a list
    grad_clip: float = 1.0
    warmup_fraction: float = 0.05
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_failures: int = 0  # worker-group restarts after a failure, each from the latest checkpoint
    startup_retries: int = 2  # attempts to start the worker group again when it cannot start (-1: forever)
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.num_workers < 0:
            raise ValueError("train.num_workers must be >= 0 (0 runs the loop in the driver process)")
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"train.zero_stage={self.zero_stage}: use 0, 1 or 2 (ZeRO-2 is the recipe)")
        if self.max_steps < 1:
            raise ValueError("train.max_steps must be >= 1")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("train.checkpoint_every and train.log_every must be >= 1 (steps)")
        if self.keep_checkpoints < 1:
            raise ValueError("train.keep_checkpoints must be >= 1 (the latest is needed to resume)")
        if self.grad_accum < 1 or self.batch_size_per_worker < 1:
            raise ValueError("train.grad_accum and train.batch_size_per_worker must be >= 1")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"train.warmup_fraction={self.warmup_fraction} must lie in [0, 1]")
        if self.lr <= 0:
            raise ValueError(f"train.lr={self.lr} must be > 0")
        if self.grad_clip <= 0:
            raise ValueError(f"train.grad_clip={self.grad_clip} must be > 0 (the recipe clips at 1.0)")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay={self.weight_decay} must be >= 0")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"train.betas={list(self.betas)} must each lie in [0, 1) (AdamW's moment decay rates)")
        negative = {k: v for k, v in self.lr_multipliers.items() if v < 0}
        if negative:
            raise ValueError(f"train.lr_multipliers {negative} must be >= 0 (0 freezes, 1 keeps train.lr)")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"train.cpus_per_worker={self.cpus_per_worker} must be > 0")
        if self.max_failures < 0:
            raise ValueError(f"train.max_failures={self.max_failures} must be >= 0 (restarts after a worker failure)")
        if self.startup_retries < -1:
            raise ValueError(f"train.startup_retries={self.startup_retries} must be >= 0, or -1 for forever")
        if self.precision == "bf16" and self.use_gpu is False:
            pass  # bf16 works on CPU with DeepSpeed, only slower; allowed on purpose
        return self


class SamPretrainConfig(PretrainOptions):
    """Pre-train a from-scratch SAM-2 with point and box prompts before SALMA training
    (``pipelines.sam_pretrain``): what a SAM-2.1 checkpoint gives the real presets. The driver
    trains it once on the instance masks of ``data.sources``, caches it at ``out`` and sets
    ``model.sam.checkpoint`` to it. The training settings are ``salma.sam_pretraining``'s
    ``PretrainOptions``; ``frames_per_video`` is how many frames of each training video give
    instances.

    ``processes`` > 1 trains data-parallel in that many spawned processes of ``threads`` torch
    threads each (set ``threads: 1``; gloo all-reduce of the gradients,
    ``salma.sam_pretraining.pretrain_sam`` with ``data_parallel``): torch's extra threads gain
    little at the tiny preset's size, processes scale with the cores. On 2 cores it saves little
    (the quickstart's pre-training: 196 against 206 s), and it draws other random batches than
    one process, so the quickstart keeps 1. ``batch_size`` (and ``clip_batch``) stay the totals
    of a step, split over the processes.

    ``video_steps`` > 0 adds SAM-2's video training after the ``steps`` image steps: clips of
    ``clip_frames`` frames from the video sources, the first frame given its mask and the rest
    tracked through the memory modules, alternating with image batches (``salma.sam_pretraining``).
    Without it the memory attention, the memory encoder and the object-presence head stay random,
    and the tracker of a video prediction is untrained."""

    enabled: bool = False
    out: str = "data/sam2_pretrained.pt"
    frames_per_video: int = 3
    processes: int = 1  # data-parallel processes on the driver's machine (each draws batch_size / processes)
    threads: int = 2  # torch threads per process (0: torch's default)

    @model_validator(mode="after")
    def _check_driver(self) -> "SamPretrainConfig":
        if self.frames_per_video < 1:
            raise ValueError(f"sam_pretrain.frames_per_video={self.frames_per_video} must be >= 1")
        if self.threads < 0:
            raise ValueError("sam_pretrain.threads must be >= 0 (0: torch's default)")
        if self.processes < 1 or self.batch_size % (self.processes * self.prompts_per_image):
            raise ValueError(
                f"sam_pretrain.processes={self.processes} must be >= 1, and batch_size={self.batch_size} "
                f"divisible by processes x prompts_per_image ({self.processes} x {self.prompts_per_image})"
            )
        if self.video_steps and self.clip_batch % self.processes:
            raise ValueError(
                f"sam_pretrain.clip_batch={self.clip_batch} must be divisible by processes={self.processes}"
            )
        return self


class TrackingConfig(StrictModel):
    """MLflow. ``uri: null`` → ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<workdir>/mlflow.db``."""

    enabled: bool = True
    uri: str | None = None
    experiment: str = "salma"


class EvalConfig(StrictModel):
    """Batch inference and evaluation (``pipelines.infer``, ``pipelines.evaluate``).

    ``num_actors`` predictor actors of ``cpus_per_actor`` CPUs (and one GPU each when ``use_gpu``;
    None: GPUs when the cluster has them); 0 runs the predictor in the calling process, without
    Ray. ``generate: false`` teacher-forces the answer "It is [SEG]." instead of decoding (the
    benchmark convention is to generate; teacher forcing measures the segmentation branch alone).
    ``metric_workers`` processes compute the video metrics (None: one per CPU).
    ``records_per_batch`` records go to an actor together (Ray Data's batch size) and are asked
    together: one encoder batch for all, their expressions sharing the language model's batches;
    ``expression_batch_size`` expressions go through the language model as one padded batch
    (lower it when memory is short). ``dtype``: the compute
    precision (``auto``: bfloat16 on a GPU that has it, else float16; float32 on CPU).
    ``compile_decoder``: ``torch.compile`` SAM-2's mask decoder and MBA in each actor.
    """

    num_key_frames: int = 5
    key_frame_sampling: Literal["uniform", "first"] = "uniform"
    max_samples: int | None = None
    num_actors: int = 1
    visual_samples: int = 4
    generate: bool = True
    max_new_tokens: int = 32
    cpus_per_actor: float = 1.0
    use_gpu: bool | None = None
    threads_per_actor: int = 1
    metric_workers: int | None = None
    records_per_batch: int = 1
    expression_batch_size: int = 16
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compile_decoder: bool = False

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        if self.records_per_batch < 1 or self.expression_batch_size < 1:
            raise ValueError("eval.records_per_batch and eval.expression_batch_size must be >= 1")
        if self.num_actors < 0:
            raise ValueError("eval.num_actors must be >= 0 (0 predicts in the calling process, without Ray)")
        if self.num_key_frames < 1 or self.max_new_tokens < 1 or self.threads_per_actor < 1:
            raise ValueError("eval.num_key_frames, eval.max_new_tokens and eval.threads_per_actor must be >= 1")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError("eval.max_samples must be >= 1, or null for the whole split")
        if self.visual_samples < 0:
            raise ValueError("eval.visual_samples must be >= 0 (0: no visual report)")
        if self.cpus_per_actor <= 0:
            raise ValueError(f"eval.cpus_per_actor={self.cpus_per_actor} must be > 0")
        if self.metric_workers is not None and self.metric_workers < 1:
            raise ValueError("eval.metric_workers must be >= 1, or null for one per CPU")
        return self


class ExperimentConfig(StrictModel):
    name: str = "salma"
    workdir: str = "runs"
    model: dict[str, Any] = Field(default_factory=dict)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sam_pretrain: SamPretrainConfig = Field(default_factory=SamPretrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("model")
    @classmethod
    def _model_valid(cls, v: dict[str, Any]) -> dict[str, Any]:
        resolve_model_config(v)  # raises with the offending field
        return v

    @model_validator(mode="after")
    def _pretrain_or_checkpoint(self) -> "ExperimentConfig":
        checkpoint = self.model.get("sam", {}).get("checkpoint")
        if self.sam_pretrain.enabled and checkpoint and checkpoint != self.absolute(self.sam_pretrain.out):
            raise ValueError(
                f"sam_pretrain.enabled trains SAM-2 from scratch into {self.sam_pretrain.out}, but "
                f"model.sam.checkpoint={checkpoint!r} names another checkpoint: drop one of the two"
            )
        return self

    @property
    def model_config_resolved(self) -> SalmaConfig:
        return resolve_model_config(self.model)

    def absolute(self, path: str) -> str:
        """Relative paths in a config are relative to the working directory of the launch;
        Ray workers change directory, so the pipeline resolves them once, on the driver."""
        return str(Path(path).expanduser().resolve())

    def resolved(self) -> dict[str, Any]:
        """The complete config (model preset expanded) as plain data: what gets logged."""
        data = self.model_dump(mode="json")
        data["model"] = self.model_config_resolved.model_dump(mode="json")
        return data


def override_items(items: list[str]) -> list[tuple[list[str], Any]]:
    """``["train.max_steps=20"]`` → ``[(["train", "max_steps"], 20)]`` (values parsed as YAML, with
    the checks of ``pipelines.config_yaml``)."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value (e.g. train.max_steps=20)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: {key.strip()!r} is not a dotted key path (e.g. train.max_steps)")
        out.append((parts, parse_config_text(raw, source=f"override {item!r}")))
    return out


def apply_overrides(data: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """``data`` (a new dict) with every ``key.path=value`` of ``items`` set, in order. The value
    replaces what the path held, a mapping included: ``train.lr_multipliers={}`` clears the
    multipliers, and ``train.lr_multipliers={mllm: 0.5}`` leaves no other entry; to change one
    entry alone, name it (``train.lr_multipliers.mllm=0.5``)."""
    return _applied(data, items)[0]


def _applied(data: dict[str, Any], items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``apply_overrides``'s result, and the overrides as a nested dict (``parse_overrides``),
    from one parse of ``items``."""
    parsed = override_items(items)
    given = _nested(items, parsed)  # also the conflict check
    for parts, value in parsed:
        data = set_path(data, parts, value)
    return data, given


def set_path(data: dict[str, Any], parts: list[str], value: Any) -> dict[str, Any]:
    """``data`` (a new dict; the mappings on the path are copied) with ``value`` at the key path
    ``parts``, replacing what was there."""
    out = dict(data)
    node = out
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, dict) else {}
        node = node[part]
    node[parts[-1]] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.max_steps=20", "model.mba.enabled=false"]`` → nested dict (values parsed as YAML,
    with the checks of ``pipelines.config_yaml``)."""
    return _nested(items, override_items(items))


def _nested(items: list[str], parsed: list[tuple[list[str], Any]]) -> dict[str, Any]:
    """The nested dict of already parsed overrides; an error where one sets a key inside the
    value of another."""
    out: dict[str, Any] = {}
    for item, (parts, value) in zip(items, parsed):
        node = out
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"override {item!r} sets a key inside {where}, which another override sets to {node!r}; "
                    f"drop one of the two"
                )
        node[parts[-1]] = value
    return out


def load_experiment(path: str | os.PathLike | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an experiment YAML (deltas, with its ``base:`` chain), apply overrides, validate.
    Errors name the file."""
    data = {} if path is None else read_config_file(path, what="experiment config")
    data, given = _applied(data, overrides or [])
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        where = str(path) if path is not None else None
        raise ConfigError(describe_validation_error(err, root=ExperimentConfig, source=where, overrides=given)) from None
