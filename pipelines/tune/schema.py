"""The sweep file: its ``sweep:`` section (``SweepSettings``), the configurations it expands to
(variants x search space) and every trial's validated experiment config (``Sweep``)."""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from pipelines.config import ExperimentConfig, apply_overrides, override_items, set_path
from pipelines.config_yaml import read_config_file, read_config_mapping
from pipelines.config_errors import ConfigError, describe_validation_error
from salma.config import StrictModel, deep_update


logger = logging.getLogger(__name__)


SWEEP_FILE = "sweep.yaml"
STATE_FILE = "sweep.json"
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
TRIALS_CSV = "trials.csv"
SUMMARY_PNG = "summary.png"
SUMMARY_JSON = "summary.json"
BEST_YAML = "best.yaml"
EVAL_FILE = "eval.json"
TRIALS_DIR = "trials"
_SEED_FIELDS = ("train.seed", "data.seed", "model.seed")
_DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform")


class AshaSettings(StrictModel):
    """ASHA in optimizer steps: a trial is first judged after ``grace_period`` steps, then at
    ``grace_period * reduction_factor**k``; ``max_t: null`` = the experiment's ``train.max_steps``."""

    max_t: int | None = None
    grace_period: int = 1
    reduction_factor: float = 2.0

    @model_validator(mode="after")
    def _check(self) -> "AshaSettings":
        if self.grace_period < 1 or (self.max_t is not None and self.max_t < self.grace_period):
            raise ValueError("sweep.asha: need 1 <= grace_period <= max_t (steps)")
        if self.reduction_factor <= 1:
            raise ValueError("sweep.asha.reduction_factor must be > 1")
        return self


class StatsSettings(StrictModel):
    """Paired statistics over the arms (``pipelines.sweep_stats``): ``reference`` names the arm the
    others are compared with, ``columns`` the metrics ``<split>/<name>`` (e.g.
    ``lure_img/probe/lure_share``), ``control_source`` the split whose probe cIoU must beat the
    expression-ignoring floor for a trial to count (null: every finished trial counts)."""

    reference: str
    columns: list[str] = Field(min_length=1)
    control_source: str | None = None
    bootstrap: int = Field(2000, ge=100)
    bootstrap_seed: int = 0


class SweepSettings(StrictModel):
    """The ``sweep:`` section. ``search_space`` maps a dotted config field to a list of values
    (grid; a random choice in ``mode: random``) or to one of ``{grid: [..]}``, ``{choice: [..]}``,
    ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}`` (the last two: random mode only).
    ``variants`` are named points, each a mapping of dotted fields to values, crossed with the
    search space. ``resources_per_trial`` is what the trial's driver function reserves; the train
    workers reserve their own (``train.num_workers`` x ``train.cpus_per_worker``, GPUs), and each
    train worker's Ray Data decode actors ``data.encode_actors`` x ``data.cpus_per_task``."""

    name: str | None = None
    mode: Literal["grid", "random"] = "grid"
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    search_space: dict[str, Any] = Field(default_factory=dict)
    num_samples: int = 1
    search_seed: int = 0
    seeds: list[int] = Field(default_factory=lambda: [0])
    metric: str = "val/mask_loss"
    metric_mode: Literal["min", "max"] = "min"
    scheduler: Literal["asha", "none"] = "asha"
    asha: AshaSettings = Field(default_factory=AshaSettings)
    resources_per_trial: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    max_concurrent_trials: int = 1
    # Benchmark evaluation of every trial that trains to the end (see ``evaluate_trial``); the
    # summary reports the eval metrics named in eval_columns (see ``eval_columns``) beside ``metric``.
    evaluate: bool = False
    eval_columns: list[str] = Field(default_factory=lambda: ["ciou", "giou", "jf", "update_energy/target_share"])
    # The drift probe (pipelines.drift_probe) of every trial that trains to the end, on the eval
    # splits with clutter annotations; its metrics join the trial's eval scores (eval/<split>/probe/*).
    drift_probe: bool = False
    stats: StatsSettings | None = None

    @model_validator(mode="after")
    def _check(self) -> "SweepSettings":
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("sweep.seeds must be a non-empty list of distinct integers")
        if self.num_samples < 1 or self.max_concurrent_trials < 1:
            raise ValueError("sweep.num_samples and sweep.max_concurrent_trials must be >= 1")
        if self.mode == "grid" and self.num_samples != 1:
            raise ValueError("sweep.num_samples applies to mode: random; a grid runs every point once")
        if any(v < 0 for v in self.resources_per_trial.values()):
            raise ValueError("sweep.resources_per_trial values must be >= 0")
        if not any(v > 0 for v in self.resources_per_trial.values()):
            raise ValueError("sweep.resources_per_trial needs a positive amount of some resource (Tune cannot "
                             "schedule a trial that reserves nothing); a small share such as {CPU: 0.1} will do")
        for key, spec in self.search_space.items():
            _check_distribution(key, spec, self.mode)
        if self.evaluate and not self.eval_columns:
            raise ValueError("sweep.eval_columns must name at least one metric suffix when sweep.evaluate is true")
        if self.stats is not None and not (self.evaluate or self.drift_probe):
            raise ValueError("sweep.stats needs per-trial scores: set sweep.drift_probe (or sweep.evaluate) to true")
        return self

    @property
    def scores_trials(self) -> bool:
        """Whether each finished trial is scored after training (benchmark and/or drift probe)."""
        return self.evaluate or self.drift_probe


def _check_distribution(key: str, spec: Any, mode: str) -> None:
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"sweep.search_space.{key}: an empty list of values")
        return
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in _DISTRIBUTIONS):
        raise ValueError(
            f"sweep.search_space.{key}: use a list of values or one of "
            + ", ".join(f"{{{d}: [...]}}" for d in _DISTRIBUTIONS)
        )
    kind, values = next(iter(spec.items()))
    if kind in ("uniform", "loguniform"):
        if mode == "grid":
            raise ValueError(f"sweep.search_space.{key}: {kind} needs mode: random (a grid needs a list)")
        if not (isinstance(values, list) and len(values) == 2 and values[0] < values[1]):
            raise ValueError(f"sweep.search_space.{key}: {kind} takes [low, high] with low < high")
        if kind == "loguniform" and values[0] <= 0:
            raise ValueError(f"sweep.search_space.{key}: loguniform needs low > 0")
    elif not (isinstance(values, list) and values):
        raise ValueError(f"sweep.search_space.{key}: {kind} takes a non-empty list of values")


@dataclass(frozen=True)
class Configuration:
    """One point of the sweep: a label for tables and the dotted-field overrides it applies."""

    label: str
    overrides: dict[str, Any]


@dataclass
class Sweep:
    """A loaded, validated sweep: settings, the experiment (plain data, base inlined) and the
    configurations. ``source`` is what ``sweep.yaml`` in the sweep folder records."""

    name: str
    settings: SweepSettings
    experiment: dict[str, Any]
    configurations: list[Configuration]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def num_trials(self) -> int:
        return len(self.configurations) * len(self.settings.seeds)

    def trial_config(self, overrides: dict[str, Any], seed: int) -> ExperimentConfig:
        data = self.experiment
        for key, value in {**overrides, **{k: seed for k in _SEED_FIELDS}}.items():
            data = set_path(data, key.split("."), value)
        try:
            return ExperimentConfig.model_validate(data)
        except ValidationError as err:
            problems = describe_validation_error(err, root=ExperimentConfig, source=None, overrides={})
            raise ConfigError(f"sweep {self.name}: configuration {overrides} (seed {seed}) is invalid:\n{problems}") from None

    def best_experiment(self, configuration: Configuration) -> dict[str, Any]:
        data = self.experiment
        for key, value in configuration.overrides.items():
            data = set_path(data, key.split("."), value)
        return data


def load_sweep(path: str | os.PathLike, overrides: list[str] | None = None) -> Sweep:
    """Read a sweep YAML, apply ``key=value`` overrides (``sweep.*`` and ``base`` go to the sweep,
    anything else to the experiment), inline the base, expand and validate every trial's config."""
    path = Path(path)
    items = overrides or []
    to_sweep, to_experiment = [], []
    for item, (parts, _) in zip(items, override_items(items)):
        (to_sweep if parts[0] in ("sweep", "base") else to_experiment).append(item)
    raw = read_config_mapping(path, what="sweep")  # its base is resolved below, after the overrides
    raw = apply_overrides(raw, to_sweep)
    if "sweep" not in raw:
        raise ConfigError(f"{path} has no sweep: section (a plain experiment runs with salma train)")
    base = raw.pop("base", None)
    sweep_raw = raw.pop("sweep") or {}
    experiment: dict[str, Any] = {}
    if base is not None:
        base_path = (path.parent / base).resolve()
        experiment = read_config_file(base_path, what="experiment config")
        if "sweep" in experiment:
            raise ConfigError(f"{path}: base {base_path} must be a plain experiment YAML, not a sweep")
    # The sweep file's keys merge into its base; the command line's then replace what they name.
    experiment = apply_overrides(deep_update(experiment, raw), to_experiment)
    return build_sweep(sweep_raw, experiment, default_name=path.stem, where=str(path))


def build_sweep(sweep_raw: dict[str, Any], experiment: dict[str, Any], *, default_name: str, where: str) -> Sweep:
    try:
        settings = SweepSettings.model_validate(sweep_raw)
    except ValidationError as err:
        problems = describe_validation_error(err, root=SweepSettings, source=where, overrides={})
        raise ConfigError(f"invalid sweep section in {where}:\n{problems}") from None
    name = settings.name or default_name
    sweep = Sweep(name=name, settings=settings, experiment=experiment, configurations=_configurations(settings),
                  source={"sweep": {**sweep_raw, "name": name}, **experiment})
    labels = [c.label for c in sweep.configurations]
    if settings.stats is not None and settings.stats.reference not in labels:
        raise ConfigError(f"{where}: sweep.stats.reference={settings.stats.reference!r} is not one of the "
                          f"configurations {labels}")
    for configuration in sweep.configurations:
        for seed in settings.seeds:
            cfg = sweep.trial_config(configuration.overrides, seed)
            _check_trial(cfg, settings, where)
    return sweep


def _check_trial(cfg: ExperimentConfig, settings: SweepSettings, where: str) -> None:
    if cfg.train.num_workers < 1:
        raise ConfigError(
            f"{where}: train.num_workers must be >= 1 in a sweep (Train's local mode, num_workers: 0, "
            "runs no callbacks, so its reports would never reach Tune)"
        )
    if settings.metric.startswith("val/") and not cfg.data.eval_sources:
        raise ConfigError(f"{where}: sweep.metric {settings.metric} is the held-out loss; it needs data.eval_sources")
    if settings.scores_trials and not cfg.data.eval_sources:
        raise ConfigError(f"{where}: sweep.evaluate / sweep.drift_probe need data.eval_sources "
                          "(the splits each trial is scored on)")
    max_t = settings.asha.max_t or cfg.train.max_steps
    if settings.scheduler == "asha" and settings.asha.grace_period > max_t:
        raise ConfigError(f"{where}: sweep.asha.grace_period={settings.asha.grace_period} exceeds max_t={max_t} steps")


def _configurations(settings: SweepSettings) -> list[Configuration]:
    """Variants x search space. Random draws happen here, once, from ``search_seed``, so that every
    seed of a configuration trains the very same configuration (Tune would redraw per trial)."""
    variants = list(settings.variants.items()) or [("", {})]
    if settings.mode == "grid":
        keys = list(settings.search_space)
        grids = [_values(settings.search_space[k]) for k in keys]
        points = [dict(zip(keys, combo)) for combo in itertools.product(*grids)]
    else:
        rng = random.Random(settings.search_seed)
        points = [{k: _draw(spec, rng) for k, spec in settings.search_space.items()} for _ in range(settings.num_samples)]
    out = []
    for (variant, fixed), point in itertools.product(variants, points):
        parts = ([variant] if variant else []) + [f"{_short(k)}={_show(v)}" for k, v in point.items()]
        out.append(Configuration(label=", ".join(parts) or "base", overrides={**fixed, **point}))
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise ValueError("sweep: two configurations are identical; remove the duplicate values or variants")
    return out


def _values(spec: Any) -> list[Any]:
    return spec if isinstance(spec, list) else next(iter(spec.values()))


def _draw(spec: Any, rng: random.Random) -> Any:
    if isinstance(spec, list):
        return rng.choice(spec)
    kind, values = next(iter(spec.items()))
    if kind in ("grid", "choice"):
        return rng.choice(values)
    low, high = values
    if kind == "uniform":
        return rng.uniform(low, high)
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _short(key: str) -> str:
    return key.removeprefix("model.")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
