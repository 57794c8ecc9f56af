"""What a finished sweep writes: the summary (markdown, CSV, plot, ``best.yaml``), the per-trial
table, the paired statistics over arms, and the closing of stopped trials' MLflow runs."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines import tracking
from pipelines.tune.schema import BEST_YAML, Configuration, EVAL_FILE, SUMMARY_CSV, SUMMARY_JSON, SUMMARY_MD, SUMMARY_PNG, SWEEP_FILE, Sweep, TRIALS_CSV, TRIALS_DIR

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneResult:
    sweep_dir: str
    mlflow_run_id: str | None
    best_configuration: str | None
    best_config_path: str | None
    trial_steps: int
    full_grid_steps: int
    summary: dict[str, Any] = field(default_factory=dict)


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


def finish(sweep: Sweep, sweep_dir: str, grid, parent: tracking.Tracker, state: dict[str, Any]) -> TuneResult:
    outcomes = [_outcome(sweep, r, sweep_dir) for r in grid]
    summary = summarize(sweep, outcomes)
    files = write_results(sweep, outcomes, summary, sweep_dir)
    stat_values: dict[str, float] = {}
    if sweep.settings.stats is not None:
        stats_files, stat_values = write_statistics(sweep, outcomes, sweep_dir)
        files += stats_files
    close_stopped_children(state, outcomes)
    for path in files:
        parent.log_artifact(str(path))
    parent.log_artifact(str(Path(sweep_dir, SWEEP_FILE)))
    metrics = {"sweep/trial_steps": summary["trial_steps"], "sweep/full_grid_steps": summary["full_grid_steps"],
               "sweep/num_trials": len(outcomes)}
    if summary["best"] is not None:
        metrics[f"best/{sweep.settings.metric}"] = summary["best"]["mean"]
        parent.set_tags({"salma.best_configuration": summary["best"]["configuration"], "salma.best_rule": summary["best_rule"]})
    metrics.update(stat_values)
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
        status=status, eval=_trial_eval(Path(sweep_dir, TRIALS_DIR, trial_id)) if sweep.settings.scores_trials else {},
    )


def write_statistics(sweep: Sweep, outcomes: list[TrialOutcome], sweep_dir: str) -> tuple[list[Path], dict[str, float]]:
    """``sweep.stats``: the paired statistics (``pipelines.sweep_stats``) written to the sweep
    folder; returns those files and the metrics for the parent run."""
    from pipelines.drift_probe import PROBE_FILE
    from pipelines.sweep_stats import TrialData, stats_metrics, sweep_statistics, write_statistics_files

    settings = sweep.settings.stats
    trials = []
    for o in outcomes:
        rows_path = Path(sweep_dir, TRIALS_DIR, o.trial_id, PROBE_FILE)
        rows = json.loads(rows_path.read_text()) if rows_path.is_file() else {}
        trials.append(TrialData(o.configuration, o.seed, o.status == "completed", o.eval, rows))
    result = sweep_statistics(
        trials, arms=[c.label for c in sweep.configurations], reference=settings.reference,
        columns=settings.columns, control_source=settings.control_source,
        bootstrap=settings.bootstrap, bootstrap_seed=settings.bootstrap_seed,
    )
    return write_statistics_files(result, Path(sweep_dir)), stats_metrics(result)


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
    (``ciou``, ``update_energy/target_share`` …): splits in the order the trials reported them, names
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
            "(generation, the benchmark metrics; cIoU / gIoU / J&F in %, update-energy target share in [0, 1]): "
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
    names = {"ciou": "cIoU", "giou": "gIoU", "jf": "J&F", "j": "J", "f": "F", "update_energy/target_share": "update-energy share"}
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
