"""One trial: a Ray Tune function trainable that runs ``pipelines.train.train`` (the code path of
``salma train``) and evaluates the result; the ASHA scheduler that judges trials on the
optimizer step."""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from pipelines.config import ExperimentConfig
from pipelines.run_folder import RUN_FILE
from pipelines.tune.schema import Configuration, EVAL_FILE, Sweep, TRIALS_DIR

logger = logging.getLogger(__name__)


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
    settings = context.sweep.settings
    if settings.scores_trials:
        evaluate_trial(cfg, result, workdir, benchmark=settings.evaluate, probe=settings.drift_probe)


def evaluate_trial(
    cfg: ExperimentConfig, result, workdir: str, *, benchmark: bool = True, probe: bool = False
) -> dict[str, float]:
    """Export a finished trial's final checkpoint and score it on ``cfg.data.eval_sources``: with
    ``benchmark``, the benchmark metrics (generation, as ``salma evaluate``), in the trial's own
    process (no predictor actors: the trial's CPUs are already reserved); with ``probe``, the drift
    probe (``pipelines.drift_probe``; its per-object rows go to ``<workdir>/drift_probe.json``).
    The scores go onto the trial's MLflow run and into ``<workdir>/eval.json``, which the summary
    reads. A trial ASHA stops never gets here."""
    from pipelines.drift_probe import PROBE_FILE, probe_sources
    from pipelines.evaluate import TrackingTarget, evaluate_model, log_to_mlflow
    from pipelines.export import export_checkpoint
    from pipelines.prediction_folder import write_text_atomic
    from pipelines.tracking import tracking_uri
    from salma.export import load_exported

    if result.checkpoint_path is None:
        raise RuntimeError(f"trial in {workdir} finished without a checkpoint; nothing to evaluate")
    started = time.perf_counter()
    export_dir = Path(result.run_dir) / "export"
    export_checkpoint(result.checkpoint_path, export_dir)
    uri = tracking_uri(cfg) if result.run_id else None
    metrics: dict[str, float] = {}
    if benchmark:
        metrics.update(evaluate_model(
            str(export_dir), cfg.data.eval_sources, Path(result.run_dir) / "eval", num_actors=0,
            settings=cfg.eval, run_id=result.run_id, tracking_uri=uri,
        ))
    if probe:
        probed, rows = probe_sources(load_exported(export_dir), cfg.data.eval_sources, num_frames=cfg.data.num_frames)
        rows_path = Path(workdir) / PROBE_FILE
        write_text_atomic(rows_path, json.dumps(rows))
        metrics.update(probed)
        if uri is not None:
            finite = {k: v for k, v in probed.items() if math.isfinite(v)}
            log_to_mlflow(TrackingTarget(uri=uri, run_id=result.run_id), finite, [(rows_path, "drift_probe")], {})
    write_text_atomic(Path(workdir) / EVAL_FILE, json.dumps(metrics, indent=1))
    logger.info("evaluated %s in %.0f s", result.run_dir, time.perf_counter() - started)
    return metrics


def _unfinished_run(workdir: str) -> str | None:
    """The training run a previous attempt of this trial started (the driver was killed)."""
    folder = Path(workdir)
    runs = sorted(p for p in folder.iterdir() if (p / RUN_FILE).is_file()) if folder.is_dir() else []
    return str(runs[-1]) if runs else None


def trainable(context: TrialContext):
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


def trial_dirname(trial) -> str:
    return trial.trial_id


def param_space(sweep: Sweep) -> dict[str, Any]:
    from ray import tune

    return {
        "configuration": tune.grid_search([asdict(c) for c in sweep.configurations]),
        "seed": tune.grid_search(list(sweep.settings.seeds)),
    }
