"""The sweep driver: ``tune`` starts or resumes a sweep (``Tuner`` / ``Tuner.restore``), keeps the
MLflow parent run and the sweep state, and hands the results to ``pipelines.tune.results``;
``main`` is ``salma tune``."""

from __future__ import annotations

import argparse
import json
import logging
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import yaml

from pipelines import console, tracking
from pipelines.config import ExperimentConfig
from pipelines.local_ray import init_ray
from pipelines.tune.schema import STATE_FILE, SWEEP_FILE, Sweep, build_sweep, load_sweep
from pipelines.tune.results import TuneResult, finish
from pipelines.tune.trials import TrialContext, build_scheduler, param_space, trainable, trial_dirname

logger = logging.getLogger(__name__)


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
            tuner = ray_tune.Tuner.restore(sweep_dir, trainable=trainable(context), resume_unfinished=True,
                                           resume_errored=True)
        else:
            tuner = ray_tune.Tuner(
                trainable(context),
                param_space=param_space(sweep),
                tune_config=ray_tune.TuneConfig(
                    metric=sweep.settings.metric, mode=sweep.settings.metric_mode, scheduler=build_scheduler(sweep),
                    num_samples=1, max_concurrent_trials=sweep.settings.max_concurrent_trials,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=ray_tune.RunConfig(name=Path(sweep_dir).name, storage_path=str(Path(sweep_dir).parent)),
            )
        grid = tuner.fit()
        result = finish(sweep, sweep_dir, grid, parent, state)
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
    starts (a local ``model.init_from`` folder is made absolute too). With ``sam_pretrain.enabled``
    the SAM-2 checkpoint is pre-trained here, once, and
    every trial finds it in the cache. ``sweep.yaml`` records the absolute paths, so ``--resume``
    works from anywhere."""
    from pipelines.train import prepare_data

    prepared = prepare_data(ExperimentConfig.model_validate(sweep.experiment))
    paths = {"data": prepared.data.model_dump(mode="json")}
    if "init_from" in prepared.model:
        paths["model"] = {**sweep.experiment.get("model", {}), "init_from": prepared.model["init_from"]}
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


def main(argv: list[str] | None = None) -> int:
    import pipelines.tune

    parser = argparse.ArgumentParser(prog="salma tune", description=pipelines.tune.__doc__.split("\n\n")[0],
                                     formatter_class=console.DocstringHelp)
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
