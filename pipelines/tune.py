"""Ablation sweeps: Ray Tune over training runs, ASHA early stopping, MLflow parent/child runs.

    python -m pipelines.tune --config experiments/ablations/X.yaml [key=value ...]
    python -m pipelines.tune --resume SWEEP_DIR              (salma tune … is the same)

A sweep YAML is an experiment (``base:`` an experiment YAML, relative to the sweep file, plus
inline experiment deltas at the top level) and a ``sweep:`` section (``SweepSettings``). The
configurations are the named ``variants`` times the ``search_space`` (a grid, or ``num_samples``
random draws in ``mode: random``), each repeated over ``seeds``. Every (configuration, seed) is
one Tune trial: a *function* trainable that calls ``pipelines.train.train`` — the code path of
``salma train`` — with Tune's ``TuneReportCallback`` on the Train ``RunConfig``, so every Train
report (one per checkpoint) is one Tune iteration. ASHA stops trials on ``sweep.metric``
(default ``val/mask_loss``, the held-out loss of ``pipelines.held_out``), with the optimizer step
as its time axis.

The driver opens one MLflow parent run per sweep; each trial's training run is a child
(``mlflow.parentRunId``) holding its params, curves and final metrics. When the sweep ends the
driver writes, into the sweep folder and onto the parent run: ``summary.md`` / ``summary.csv``
(metric mean ± std over seeds per configuration, with the compute accounting), ``trials.csv``,
``summary.png`` (metric per configuration, error bars over seeds) and ``best.yaml`` (the best
configuration as an experiment YAML for ``salma train``).

Restore: the sweep folder is Tune's own experiment folder (``tune.RunConfig(name,
storage_path)``), and holds ``sweep.yaml`` (the resolved sweep, base inlined) and ``sweep.json``
(the parent MLflow run). ``--resume`` calls ``Tuner.restore`` on it: finished trials are kept, not
rerun; an unfinished trial starts again and resumes its training run from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import itertools
import json
import logging
import math
import os
import random
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from collections.abc import Callable
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from pipelines import console, tracking
from pipelines.config import ExperimentConfig, parse_overrides
from pipelines.config_errors import ConfigError, describe_validation_error
from pipelines.local_ray import init_ray
from pipelines.run_folder import RUN_FILE
from salma.config import deep_update

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


# ====================================================================================== schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class AshaSettings(_Strict):
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


class SweepSettings(_Strict):
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
    eval_columns: list[str] = Field(default_factory=lambda: ["ciou", "giou", "jf", "drift/target_share"])

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
        return self


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
            data = deep_update(data, _nest(key, value))
        try:
            return ExperimentConfig.model_validate(data)
        except ValidationError as err:
            problems = describe_validation_error(err, root=ExperimentConfig, source=None, overrides={})
            raise ConfigError(f"sweep {self.name}: configuration {overrides} (seed {seed}) is invalid:\n{problems}") from None

    def best_experiment(self, configuration: Configuration) -> dict[str, Any]:
        data = self.experiment
        for key, value in configuration.overrides.items():
            data = deep_update(data, _nest(key, value))
        return data


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def load_sweep(path: str | os.PathLike, overrides: list[str] | None = None) -> Sweep:
    """Read a sweep YAML, apply ``key=value`` overrides (``sweep.*`` and ``base`` go to the sweep,
    anything else to the experiment), inline the base, expand and validate every trial's config."""
    path = Path(path)
    raw = _read_mapping(path)
    raw = deep_update(raw, parse_overrides(overrides or []))
    if "sweep" not in raw:
        raise ConfigError(f"{path} has no sweep: section (a plain experiment runs with salma train)")
    base = raw.pop("base", None)
    sweep_raw = raw.pop("sweep") or {}
    experiment: dict[str, Any] = {}
    if base is not None:
        base_path = (path.parent / base).resolve()
        experiment = _read_mapping(base_path)
        if "sweep" in experiment or "base" in experiment:
            raise ConfigError(f"{path}: base {base_path} must be a plain experiment YAML, not a sweep")
    experiment = deep_update(experiment, raw)
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
    if settings.evaluate and not cfg.data.eval_sources:
        raise ConfigError(f"{where}: sweep.evaluate needs data.eval_sources (the splits each trial is scored on)")
    max_t = settings.asha.max_t or cfg.train.max_steps
    if settings.scheduler == "asha" and settings.asha.grace_period > max_t:
        raise ConfigError(f"{where}: sweep.asha.grace_period={settings.asha.grace_period} exceeds max_t={max_t} steps")


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


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


# ====================================================================================== trials
@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its own (configuration, seed)."""

    sweep: Sweep
    sweep_dir: str
    sweep_id: str
    tracking_uri: str | None
    parent_run_id: str | None


def run_trial(config: dict[str, Any], *, context: TrialContext) -> None:
    """The Tune function trainable: one training run, reported to Tune by Train's callback."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.train import train

    trial_id = tune.get_context().get_trial_id()
    configuration = Configuration(**config["configuration"])
    seed = int(config["seed"])
    workdir = f"{context.sweep_dir}/{TRIALS_DIR}/{trial_id}"
    cfg = context.sweep.trial_config(configuration.overrides, seed)
    update: dict[str, Any] = {"workdir": workdir, "name": f"{context.sweep.name}-{trial_id}"}
    if context.tracking_uri is not None:
        update["tracking"] = cfg.tracking.model_copy(update={"uri": context.tracking_uri})
    cfg = cfg.model_copy(update=update)
    tags = {
        "salma.sweep": context.sweep.name,
        "salma.sweep_id": context.sweep_id,
        "salma.trial_id": trial_id,
        "salma.configuration": configuration.label,
        "salma.seed": str(seed),
    }
    if context.parent_run_id is not None:
        tags["mlflow.parentRunId"] = context.parent_run_id
    resume = _unfinished_run(workdir)
    if resume:
        logger.info("trial %s resumes its training run %s", trial_id, resume)
    result = train(cfg, resume=resume, callbacks=[TuneReportCallback()], tags=tags)
    if context.sweep.settings.evaluate:
        evaluate_trial(cfg, result, workdir)


def evaluate_trial(cfg: ExperimentConfig, result, workdir: str) -> dict[str, float]:
    """Export a finished trial's final checkpoint and score it on ``cfg.data.eval_sources`` with the
    benchmark metrics (generation, as ``salma evaluate``), in the trial's own process (no predictor
    actors: the trial's CPUs are already reserved). The scores go onto the trial's MLflow run and
    into ``<workdir>/eval.json``, which the summary reads. A trial ASHA stops never gets here."""
    from pipelines.evaluate import evaluate_model
    from pipelines.export import export_checkpoint
    from pipelines.prediction_folder import write_text_atomic
    from pipelines.tracking import tracking_uri

    if result.checkpoint_path is None:
        raise RuntimeError(f"trial in {workdir} finished without a checkpoint; nothing to evaluate")
    started = time.perf_counter()
    export_dir = Path(result.run_dir) / "export"
    export_checkpoint(result.checkpoint_path, export_dir)
    metrics = evaluate_model(
        str(export_dir), cfg.data.eval_sources, Path(result.run_dir) / "eval", num_actors=0,
        settings=cfg.eval, run_id=result.run_id, tracking_uri=tracking_uri(cfg) if result.run_id else None,
    )
    write_text_atomic(Path(workdir) / EVAL_FILE, json.dumps(metrics, indent=1))
    logger.info("evaluated %s in %.0f s", result.run_dir, time.perf_counter() - started)
    return metrics


def _unfinished_run(workdir: str) -> str | None:
    """The training run a previous attempt of this trial started (the driver was killed)."""
    folder = Path(workdir)
    runs = sorted(p for p in folder.iterdir() if (p / RUN_FILE).is_file()) if folder.is_dir() else []
    return str(runs[-1]) if runs else None


def _trainable(context: TrialContext):
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(run_trial, context=context), dict(context.sweep.settings.resources_per_trial)
    )


def build_scheduler(sweep: Sweep) -> "FinishingASHA | None":
    s = sweep.settings
    if s.scheduler == "none":
        return None
    final_step = functools.partial(_final_step, sweep)
    max_steps = max(final_step({"configuration": asdict(c), "seed": s.seeds[0]}) for c in sweep.configurations)
    # Time axis: the optimizer step the training loop reports (robust to a resumed training run,
    # unlike Tune's own iteration counter, which restarts with the trial).
    return FinishingASHA(
        final_step=final_step, time_attr="step", max_t=s.asha.max_t or max_steps,
        grace_period=s.asha.grace_period, reduction_factor=s.asha.reduction_factor,
    )


def _final_step(sweep: Sweep, trial_config: dict[str, Any]) -> int:
    configuration = Configuration(**trial_config["configuration"])
    return sweep.trial_config(configuration.overrides, int(trial_config["seed"])).train.max_steps


class FinishingASHA(ASHAScheduler):
    """ASHA that never stops a trial at its final report: the trial is done by then, and stopping
    it would kill its training run before it logs its final metrics and closes its MLflow run."""

    def __init__(self, *, final_step: Callable[[dict[str, Any]], int], **kwargs: Any):
        super().__init__(**kwargs)
        self._final_step = final_step

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get("step", 0) >= self._final_step(trial.config):
            return TrialScheduler.CONTINUE
        return action


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _param_space(sweep: Sweep) -> dict[str, Any]:
    from ray import tune

    return {
        "configuration": tune.grid_search([asdict(c) for c in sweep.configurations]),
        "seed": tune.grid_search(list(sweep.settings.seeds)),
    }


# ====================================================================================== driver
@dataclass(frozen=True)
class TuneResult:
    sweep_dir: str
    mlflow_run_id: str | None
    best_configuration: str | None
    best_config_path: str | None
    trial_steps: int
    full_grid_steps: int
    summary: dict[str, Any] = field(default_factory=dict)


def tune(
    sweep: Sweep | None = None, *, resume: str | None = None, workdir: str | None = None
) -> TuneResult:
    """Run ``sweep`` in a new sweep folder under ``<workdir>/sweeps`` (default: the experiment's
    ``workdir``), or resume the sweep in the folder ``resume``. Returns where the results are."""
    from ray import tune as ray_tune

    _ensure_ray()
    if resume:
        sweep_dir, state = _resume_state(resume)
        sweep = build_sweep(dict(state["source"]["sweep"]), _experiment_of(state["source"]),
                            default_name=state["name"], where=str(Path(sweep_dir) / SWEEP_FILE))
        parent = _reopen_parent(state)
    else:
        if sweep is None:
            raise ValueError("tune() needs a sweep or resume=SWEEP_DIR")
        sweep = with_absolute_data_paths(sweep)
        base = ExperimentConfig.model_validate(sweep.experiment)
        root = Path(workdir or base.absolute(base.workdir)).resolve() / "sweeps"
        sweep_dir = str(root / f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
        state = _new_state(sweep, sweep_dir, base)
        parent = _open_parent(sweep, state, base)
    _save_state(sweep_dir, state)
    context = TrialContext(sweep=sweep, sweep_dir=sweep_dir, sweep_id=state["sweep_id"],
                           tracking_uri=state["tracking_uri"], parent_run_id=state["parent_run_id"])
    try:
        if resume:
            tuner = ray_tune.Tuner.restore(sweep_dir, trainable=_trainable(context), resume_unfinished=True,
                                           resume_errored=True)
        else:
            tuner = ray_tune.Tuner(
                _trainable(context),
                param_space=_param_space(sweep),
                tune_config=ray_tune.TuneConfig(
                    metric=sweep.settings.metric, mode=sweep.settings.metric_mode, scheduler=build_scheduler(sweep),
                    num_samples=1, max_concurrent_trials=sweep.settings.max_concurrent_trials,
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=ray_tune.RunConfig(name=Path(sweep_dir).name, storage_path=str(Path(sweep_dir).parent)),
            )
        grid = tuner.fit()
        result = _finish(sweep, sweep_dir, grid, parent, state)
    except KeyboardInterrupt:
        parent.finish("KILLED")
        raise
    except BaseException:
        parent.finish("FAILED")
        raise
    parent.finish("FINISHED")
    return result


def with_absolute_data_paths(sweep: Sweep) -> Sweep:
    """The sweep with its data paths resolved against the launch directory, on the driver, once.

    Trials run in Tune's trial folders, so a relative ``root`` would otherwise point into each
    trial's folder (and the synthetic data would be written once per trial). This is what
    ``salma train`` does on its driver (``prepare_data``): relative paths mean the same in both,
    the synthetic data is written once, and a source that does not parse fails before any trial
    starts. With ``sam_pretrain.enabled`` the SAM-2 checkpoint is pre-trained here, once, and
    every trial finds it in the cache. ``sweep.yaml`` records the absolute paths, so ``--resume``
    works from anywhere."""
    from pipelines.train import prepare_data

    prepared = prepare_data(ExperimentConfig.model_validate(sweep.experiment))
    paths = {"data": prepared.data.model_dump(mode="json")}
    if prepared.sam_pretrain.enabled:
        paths["sam_pretrain"] = prepared.sam_pretrain.model_dump(mode="json")
    return replace(sweep, experiment={**sweep.experiment, **paths}, source={**sweep.source, **paths})


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        init_ray(**console.ray_init_options())  # $RAY_ADDRESS when set (a cluster, or the test cluster), else a local Ray


def _experiment_of(source: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in source.items() if k != "sweep"}


def _new_state(sweep: Sweep, sweep_dir: str, base: ExperimentConfig) -> dict[str, Any]:
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    uri = tracking.resolve_tracking_uri(base.tracking, workdir=base.absolute(base.workdir)) if base.tracking.enabled else None
    state = {"name": sweep.name, "sweep_id": uuid.uuid4().hex, "tracking_uri": uri, "parent_run_id": None,
             "source": sweep.source, "attempts": []}
    header = f"# salma tune --resume {sweep_dir}\n# The resolved sweep (base inlined), as this sweep ran it.\n"
    Path(sweep_dir, SWEEP_FILE).write_text(header + yaml.safe_dump(sweep.source, sort_keys=False))
    return state


def _save_state(sweep_dir: str, state: dict[str, Any]) -> None:
    tmp = Path(sweep_dir, f"{STATE_FILE}.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(Path(sweep_dir, STATE_FILE))


def _resume_state(resume: str) -> tuple[str, dict[str, Any]]:
    sweep_dir = str(Path(resume).expanduser().resolve())
    path = Path(sweep_dir, STATE_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{sweep_dir} is not a sweep folder (it has no {STATE_FILE})")
    return sweep_dir, json.loads(path.read_text())


def _open_parent(sweep: Sweep, state: dict[str, Any], base: ExperimentConfig) -> tracking.Tracker:
    parent = tracking.start_run(
        base.model_copy(update={"tracking": base.tracking.model_copy(update={"uri": state["tracking_uri"]})}),
        run_name=f"sweep-{sweep.name}",
        resume_run_id=None,
        tags={"salma.sweep": sweep.name, "salma.sweep_id": state["sweep_id"], "salma.kind": "sweep"},
    )
    state["parent_run_id"] = parent.run_id
    return _record_attempt(sweep, state, parent)


def _reopen_parent(state: dict[str, Any]) -> tracking.Tracker:
    if state["parent_run_id"] is None or state["tracking_uri"] is None:
        return tracking.NoopTracker()
    parent = tracking.MlflowTracker(tracking_uri=state["tracking_uri"], run_id=state["parent_run_id"])
    parent.reopen()
    state["attempts"].append(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return parent


def _record_attempt(sweep: Sweep, state: dict[str, Any], parent: tracking.Tracker) -> tracking.Tracker:
    state["attempts"].append(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    s = sweep.settings
    parent.log_params({
        "sweep.mode": s.mode, "sweep.metric": s.metric, "sweep.metric_mode": s.metric_mode,
        "sweep.scheduler": s.scheduler, "sweep.seeds": s.seeds, "sweep.num_configurations": len(sweep.configurations),
        "sweep.num_trials": sweep.num_trials, "sweep.search_space": s.search_space, "sweep.variants": s.variants,
        **({f"sweep.asha.{k}": v for k, v in s.asha.model_dump().items()} if s.scheduler == "asha" else {}),
    })
    return parent


# ====================================================================================== results
@dataclass(frozen=True)
class TrialOutcome:
    trial_id: str
    configuration: str
    seed: int
    metric: float
    steps: int
    max_steps: int
    status: str
    eval: dict[str, float] = field(default_factory=dict)  # benchmark scores (sweep.evaluate)


def _finish(sweep: Sweep, sweep_dir: str, grid, parent: tracking.Tracker, state: dict[str, Any]) -> TuneResult:
    outcomes = [_outcome(sweep, r, sweep_dir) for r in grid]
    summary = summarize(sweep, outcomes)
    files = write_results(sweep, outcomes, summary, sweep_dir)
    close_stopped_children(state, outcomes)
    for path in files:
        parent.log_artifact(str(path))
    parent.log_artifact(str(Path(sweep_dir, SWEEP_FILE)))
    metrics = {"sweep/trial_steps": summary["trial_steps"], "sweep/full_grid_steps": summary["full_grid_steps"],
               "sweep/num_trials": len(outcomes)}
    if summary["best"] is not None:
        metrics[f"best/{sweep.settings.metric}"] = summary["best"]["mean"]
        parent.set_tags({"salma.best_configuration": summary["best"]["configuration"], "salma.best_rule": summary["best_rule"]})
    parent.log_metrics({k: float(v) for k, v in metrics.items() if _finite(v)}, step=0)
    best = summary["best"]
    return TuneResult(
        sweep_dir=sweep_dir, mlflow_run_id=parent.run_id,
        best_configuration=best["configuration"] if best else None,
        best_config_path=str(Path(sweep_dir, BEST_YAML)) if best else None,
        trial_steps=summary["trial_steps"], full_grid_steps=summary["full_grid_steps"], summary=summary,
    )


def _outcome(sweep: Sweep, result, sweep_dir: str) -> TrialOutcome:
    config = result.config
    configuration = Configuration(**config["configuration"])
    seed = int(config["seed"])
    metrics = result.metrics or {}
    max_steps = sweep.trial_config(configuration.overrides, seed).train.max_steps
    value = metrics.get(sweep.settings.metric)
    steps = int(metrics.get("step", 0) or 0)
    if result.error is not None:
        status = "error"
    elif steps >= max_steps:
        status = "completed"
    else:
        status = "stopped"  # ASHA ended it early
    trial_id = str(metrics.get("trial_id") or Path(result.path).name)
    return TrialOutcome(
        trial_id=trial_id, configuration=configuration.label,
        seed=seed, metric=float(value) if value is not None else math.nan, steps=steps, max_steps=max_steps,
        status=status, eval=_trial_eval(Path(sweep_dir, TRIALS_DIR, trial_id)) if sweep.settings.evaluate else {},
    )


def _trial_eval(workdir: Path) -> dict[str, float]:
    path = workdir / EVAL_FILE
    if not path.is_file():
        return {}  # stopped early, failed, or interrupted before its evaluation finished
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a JSON object of metric values: {err}") from None


def summarize(sweep: Sweep, outcomes: list[TrialOutcome]) -> dict[str, Any]:
    """Per configuration: the metric's mean ± std over seeds (the value each trial last reported,
    so a trial ASHA stopped counts with its value at the step it stopped at), steps run, trials
    stopped early; the best configuration; and the compute accounting."""
    columns = eval_columns(outcomes, sweep.settings.eval_columns)
    rows = []
    for configuration in sweep.configurations:
        mine = [o for o in outcomes if o.configuration == configuration.label]
        values = [o.metric for o in mine if _finite(o.metric)]
        scores = {}
        for column in columns:
            got = [o.eval[column] for o in mine if _finite(o.eval.get(column))]
            scores[column] = {"mean": _mean(got), "std": _std(got), "n": len(got)}
        rows.append({
            "configuration": configuration.label,
            "overrides": configuration.overrides,
            "seeds": len(values),
            "mean": _mean(values),
            "std": _std(values),
            "steps": sum(o.steps for o in mine),
            "stopped": sum(o.status == "stopped" for o in mine),
            "errors": sum(o.status == "error" for o in mine),
            "eval": scores,
        })
    best, best_rule = _best(rows, outcomes, 1 if sweep.settings.metric_mode == "min" else -1)
    return {
        "metric": sweep.settings.metric,
        "metric_mode": sweep.settings.metric_mode,
        "rows": rows,
        "best": best,
        "best_rule": best_rule,
        "trial_steps": sum(o.steps for o in outcomes),
        "full_grid_steps": sum(o.max_steps for o in outcomes),
        "num_trials": len(outcomes),
        "eval_columns": columns,
    }


def _best(rows: list[dict[str, Any]], outcomes: list[TrialOutcome], sign: int) -> tuple[dict[str, Any] | None, str]:
    """The best configuration's row and the rule that chose it.

    A trial ASHA stopped early was judged worse at its rung, and its early value is not comparable
    with final ones, so: among the configurations whose every seed ran to the end, the best mean;
    when ASHA left none (with seeds in the grid it compares trials of different seeds, so it
    rarely keeps every seed of one configuration), the configuration of the best trial it let
    finish; when no trial finished at all, the best mean of the values last reported."""
    complete = [r for r in rows if r["seeds"] and not r["stopped"] and not r["errors"]]
    if complete:
        return min(complete, key=lambda r: sign * r["mean"]), "the best mean over configurations whose every seed ran to the end"
    finished = [o for o in outcomes if o.status == "completed" and _finite(o.metric)]
    if finished:
        trial = min(finished, key=lambda o: sign * o.metric)
        row = next(r for r in rows if r["configuration"] == trial.configuration)
        return row, (f"no configuration ran every seed to the end: the configuration of the best trial that did "
                     f"({trial.trial_id}, seed {trial.seed}, {trial.metric:.4f})")
    reported = [r for r in rows if r["seeds"]]
    if reported:
        return min(reported, key=lambda r: sign * r["mean"]), "no trial ran to the end: the best mean of the values last reported"
    return None, "no trial reported the metric"


def eval_columns(outcomes: list[TrialOutcome], suffixes: list[str]) -> list[str]:
    """The trials' eval metrics ``eval/<split>/<name>`` whose ``<name>`` is one of ``suffixes``
    (``ciou``, ``drift/target_share`` …): splits in the order the trials reported them, names
    within a split in the order of ``suffixes``."""
    parsed = {}
    for key in dict.fromkeys(k for o in outcomes for k in o.eval):
        parts = key.split("/")
        if len(parts) >= 3 and parts[0] == "eval":
            parsed[key] = (parts[1], "/".join(parts[2:]))
    splits = list(dict.fromkeys(split for split, _ in parsed.values()))
    return [key for split in splits for suffix in suffixes for key, got in parsed.items() if got == (split, suffix)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: list[float]) -> float:
    """Sample standard deviation over seeds (0 for a single seed)."""
    if len(values) < 2:
        return 0.0 if values else math.nan
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def write_results(sweep: Sweep, outcomes: list[TrialOutcome], summary: dict[str, Any], sweep_dir: str) -> list[Path]:
    out = Path(sweep_dir)
    files = [out / SUMMARY_MD, out / SUMMARY_CSV, out / TRIALS_CSV, out / SUMMARY_JSON, out / SUMMARY_PNG]
    files[0].write_text(_markdown(sweep, summary))
    files[1].write_text(_summary_csv(summary))
    files[2].write_text(_trials_csv(outcomes, sweep.settings.metric, summary.get("eval_columns") or []))
    files[3].write_text(json.dumps({**summary, "trials": [asdict(o) for o in outcomes]}, indent=1, default=str))
    _plot(summary, files[4])
    if summary["best"] is not None:
        files.append(_write_best(sweep, summary["best"], out))
    return files


def _fmt(value: float) -> str:
    return f"{value:.4f}" if _finite(value) else "—"


def _markdown(sweep: Sweep, summary: dict[str, Any]) -> str:
    metric, best = summary["metric"], summary["best"]
    lines = [
        f"# Sweep {sweep.name}",
        "",
        f"Metric: `{metric}` ({summary['metric_mode']}), the value each trial last reported; mean ± sample std "
        f"over seeds {sweep.settings.seeds}. Steps: optimizer steps run over all seeds; stopped: trials ASHA "
        "ended early (their value is from the step they stopped at).",
        "",
        f"| configuration | {metric} mean ± std | seeds | steps | stopped | errors |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        mark = " **(best)**" if best is not None and r["configuration"] == best["configuration"] else ""
        lines.append(
            f"| {r['configuration']}{mark} | {_fmt(r['mean'])} ± {_fmt(r['std'])} | {r['seeds']} | {r['steps']} | "
            f"{r['stopped']} | {r['errors']} |"
        )
    if best is not None:
        lines += ["", f"Best: **{best['configuration']}**, chosen as {summary['best_rule']}."]
    columns = summary.get("eval_columns") or []
    if columns:
        lines += [
            "",
            "## Benchmark scores",
            "",
            "Each trial that trained to the end, exported and evaluated on the experiment's eval splits "
            "(generation, the benchmark metrics; cIoU / gIoU / J&F in %, drift target share in [0, 1]): "
            "mean ± sample std over the seeds evaluated (n).",
            "",
            "| configuration | " + " | ".join(_column_label(c) for c in columns) + " | n |",
            "|---|" + "---|" * (len(columns) + 1),
        ]
        for r in summary["rows"]:
            cells = [f"{_fmt_score(r['eval'][c]['mean'])} ± {_fmt_score(r['eval'][c]['std'])}" for c in columns]
            n = max((r["eval"][c]["n"] for c in columns), default=0)
            lines.append(f"| {r['configuration']} | " + " | ".join(cells) + f" | {n} |")
    saved = summary["full_grid_steps"] - summary["trial_steps"]
    lines += [
        "",
        "## Compute",
        "",
        f"- trials: {summary['num_trials']}",
        f"- trial-steps run: {summary['trial_steps']} (sum over trials of the last step each reached)",
        f"- the full grid without early stopping: {summary['full_grid_steps']} trial-steps"
        + (f" ({saved} saved, {100 * saved / summary['full_grid_steps']:.0f}%)" if summary["full_grid_steps"] else ""),
    ]
    return "\n".join(lines) + "\n"


def _column_label(column: str) -> str:
    """``eval/refcoco_val/ciou`` → ``refcoco_val cIoU``."""
    _, split, name = column.split("/", 2)
    names = {"ciou": "cIoU", "giou": "gIoU", "jf": "J&F", "j": "J", "f": "F", "drift/target_share": "drift share"}
    return f"{split} {names.get(name, name)}"


def _fmt_score(value: float) -> str:
    return f"{value:.3g}" if _finite(value) else "—"


def _csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _summary_csv(summary: dict[str, Any]) -> str:
    metric = summary["metric"]
    columns = summary.get("eval_columns") or []
    rows: list[list[Any]] = [["configuration", "overrides", f"{metric}_mean", f"{metric}_std", "seeds", "steps",
                              "stopped", "errors"] + [f"{c}_{stat}" for c in columns for stat in ("mean", "std", "n")]]
    for r in summary["rows"]:
        rows.append([r["configuration"], json.dumps(r["overrides"]), r["mean"], r["std"], r["seeds"], r["steps"],
                     r["stopped"], r["errors"]]
                    + [r["eval"][c][stat] for c in columns for stat in ("mean", "std", "n")])
    return _csv_text(rows)


def _trials_csv(outcomes: list[TrialOutcome], metric: str, columns: list[str]) -> str:
    """One row per trial; with ``sweep.evaluate``, its benchmark scores too (empty where the
    trial was not evaluated)."""
    rows: list[list[Any]] = [["trial_id", "configuration", "seed", metric, "steps", "max_steps", "status", *columns]]
    rows += [
        [o.trial_id, o.configuration, o.seed, o.metric, o.steps, o.max_steps, o.status, *(o.eval.get(c, "") for c in columns)]
        for o in outcomes
    ]
    return _csv_text(rows)


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    columns = summary.get("eval_columns") or []
    panels = [([r["mean"] for r in rows], [r["std"] for r in rows],
               f"{summary['metric']} ({summary['metric_mode']} is better)")]
    panels += [([r["eval"][c]["mean"] for r in rows], [r["eval"][c]["std"] for r in rows], _column_label(c))
               for c in columns]
    width = max(4.0, 1.2 * len(rows) + 1.5)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.2 * len(panels)), squeeze=False)
    xs = list(range(len(rows)))
    for ax, (means, stds, title) in zip(axes[:, 0], panels):
        ax.errorbar(xs, means, yerr=stds, fmt="o", capsize=4)
        ax.set_xticks(xs, [r["configuration"] for r in rows], rotation=30, ha="right")
        ax.set_ylabel("mean ± std over seeds")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_best(sweep: Sweep, best: dict[str, Any], out: Path) -> Path:
    configuration = next(c for c in sweep.configurations if c.label == best["configuration"])
    path = out / BEST_YAML
    header = (
        f"# salma train --config {path}\n"
        f"# The best configuration of sweep {sweep.name}: {configuration.label} "
        f"({sweep.settings.metric} {best['mean']:.4f} ± {best['std']:.4f} over {best['seeds']} seeds).\n"
    )
    path.write_text(header + yaml.safe_dump(sweep.best_experiment(configuration), sort_keys=False))
    return path


def close_stopped_children(state: dict[str, Any], outcomes: list[TrialOutcome]) -> None:
    """A trial ASHA stopped leaves its MLflow run RUNNING or FAILED (its process was ended from
    outside), as does a training run lost with a killed driver: mark those KILLED, tagged with
    the reason (``salma.stopped_by``: ``asha`` or ``interrupted``). Errored trials stay FAILED."""
    if state["tracking_uri"] is None:
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=state["tracking_uri"])
    by_trial = {o.trial_id: o for o in outcomes}
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`salma.sweep_id` = '{state['sweep_id']}' and attributes.status != 'FINISHED'",
    )
    for run in runs:
        if run.info.run_id == state["parent_run_id"]:
            continue
        outcome = by_trial.get(run.data.tags.get("salma.trial_id", ""))
        if outcome is not None and outcome.status == "stopped":
            reason = "asha"
        elif run.info.status == "RUNNING":
            reason = "interrupted"
        else:
            continue
        client.set_tag(run.info.run_id, "salma.stopped_by", reason)
        client.set_terminated(run.info.run_id, status="KILLED")


# ========================================================================================= CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="salma tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="sweep YAML (experiments/ablations/*.yaml)")
    parser.add_argument("--resume", metavar="SWEEP_DIR", help="resume the sweep in this folder (Tuner.restore)")
    parser.add_argument("--workdir", help="the sweep folder goes to WORKDIR/sweeps (default: the experiment's workdir)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="experiment fields (train.max_steps=20), sweep settings (sweep.seeds=[0,1]) or base=")
    args = parser.parse_args(argv)
    console.configure()
    if bool(args.config) == bool(args.resume):
        parser.error("give exactly one of --config and --resume")
    if args.resume and args.overrides:
        parser.error("--resume continues the sweep as it was started; overrides are not allowed")
    if args.resume:
        result = tune(resume=args.resume)
    else:
        result = tune(load_sweep(args.config, args.overrides), workdir=args.workdir)
    print(json.dumps({k: v for k, v in asdict(result).items() if k != "summary"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    # Run the imported module, not ``__main__``: Ray pickles the trial function and the sweep by
    # reference to their module, and a ``__main__`` copy would be pickled by value (which pydantic
    # models do not survive).
    from pipelines import tune as _module

    raise SystemExit(_module.main())
