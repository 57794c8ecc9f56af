"""Statistics that separate the arms of a sweep: means with confidence intervals, paired
differences to a reference arm, a paired t-test and a bootstrap over seeds and samples.

Pairing. Every configuration of a sweep trains once per seed, and the seed fixes the
initialisation (MBA draws its own stream, so the shared weights start equal across arms), the data
order and the point sampling; the drift probe measures every trial on the same records and frames
(``pipelines.drift_probe``). Trial ``(arm, s)`` is therefore paired with ``(reference, s)``.

Validity. A trial counts only if it grounds the sentence at all: its cIoU on the control split
(``control_source``, where the clutter does not match the sentence) must exceed the
expression-ignoring floor measured on the same objects (the union of every object taken as the
prediction: ``probe/floor_ciou``). Trials at or under the floor are reported and left out; a pair
counts only when both of its trials count.

Per arm and column (a metric ``<split>/<name>`` of the trials' evaluation):

- ``mean`` and its 95 % confidence interval over the counted seeds (Student t, n − 1 degrees of
  freedom);
- against the reference arm: the mean paired difference ``arm − reference`` over the seeds where
  both count, its t interval and the two-sided paired t-test p-value (``scipy.stats``);
- a paired bootstrap of that difference (``bootstrap`` replicates, fixed ``bootstrap_seed``):
  each replicate resamples the seeds with replacement, and, for the drift-probe columns whose
  per-object rows are stored, also the objects within each seed (the same objects for both arms,
  since they were probed on the same records), then recomputes the split measure from the rows
  (``salma.drift_measures.aggregate``); its 95 % percentile interval and the two-sided p-value
  ``2·min(P(d ≤ 0), P(d ≥ 0))``. For other columns the bootstrap resamples seeds only.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from salma.drift_measures import measure as probe_measure
from salma.drift_measures import row_columns

CONFIDENCE = 0.95


@dataclass(frozen=True)
class TrialData:
    """One trial as the statistics need it: its arm, seed, whether it finished, its scores and
    (drift-probe columns) its per-object rows per split."""

    arm: str
    seed: int
    completed: bool
    scores: Mapping[str, float]
    rows: Mapping[str, Sequence[Mapping[str, float]]] = field(default_factory=dict)


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval over ``values``; NaN bounds for fewer than 2."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def paired_t(differences: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test that the mean difference is 0 (NaN for n < 2; 1 when
    every difference is 0, 0 when they are all equal and non-zero)."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return math.nan
    sd = d.std(ddof=1)
    if sd == 0:
        return 1.0 if d.mean() == 0 else 0.0
    t = d.mean() / (sd / math.sqrt(len(d)))
    return float(2 * scipy_stats.t.sf(abs(t), len(d) - 1))


def paired_bootstrap(
    arm: Sequence[Any],
    reference: Sequence[Any],
    measure,
    *,
    replicates: int,
    seed: int,
    confidence: float = CONFIDENCE,
) -> tuple[float, float, float]:
    """(low, high, p) of the bootstrap of ``mean over seeds of measure(arm_s) − measure(ref_s)``.

    ``arm`` and ``reference``: per seed (same order, paired), either a float (resampled with its
    seed only) or per-object rows as columns (``salma.drift_measures.row_columns``: field → array),
    paired by index, which are also resampled within the seed; ``measure`` maps resampled columns
    to the split value.
    """
    rng = np.random.default_rng(seed)
    n = len(arm)
    if n == 0 or n != len(reference):
        return math.nan, math.nan, math.nan
    out = np.empty(replicates)
    for b in range(replicates):
        picks = rng.integers(n, size=n)
        diffs = []
        for s in picks:
            a, r = arm[s], reference[s]
            if isinstance(a, (int, float)):
                diffs.append(float(a) - float(r))
                continue
            count = len(next(iter(a.values())))
            rows = rng.integers(count, size=count)
            diffs.append(measure({k: v[rows] for k, v in a.items()}) - measure({k: v[rows] for k, v in r.items()}))
        out[b] = np.nanmean(diffs) if np.isfinite(diffs).any() else math.nan
    out = out[np.isfinite(out)]
    if len(out) == 0:
        return math.nan, math.nan, math.nan
    low, high = np.quantile(out, [0.5 - confidence / 2, 0.5 + confidence / 2])
    p = min(1.0, 2 * min(float((out <= 0).mean()), float((out >= 0).mean())))
    return float(low), float(high), p


def floor_check(trial: TrialData, control_source: str) -> tuple[bool, float, float]:
    """(passes, cIoU, floor) on the control split: a trial counts when cIoU > floor."""
    ciou = trial.scores.get(f"eval/{control_source}/probe/ciou", math.nan)
    floor = trial.scores.get(f"eval/{control_source}/probe/floor_ciou", math.nan)
    return bool(math.isfinite(ciou) and math.isfinite(floor) and ciou > floor), ciou, floor


def sweep_statistics(
    trials: Sequence[TrialData],
    *,
    arms: Sequence[str],
    reference: str,
    columns: Sequence[str],
    control_source: str | None,
    bootstrap: int = 2000,
    bootstrap_seed: int = 0,
) -> dict[str, Any]:
    """The statistics of the module docstring. ``columns``: ``<split>/<name>`` metrics (e.g.
    ``lure_img/probe/lure_share``). Returns ``{"rows": [...], "floor": {...}, ...}``."""
    if reference not in arms:
        raise ValueError(f"sweep.stats.reference={reference!r} is not one of the arms {list(arms)}")
    counted: dict[tuple[str, int], TrialData] = {}
    floor_rows = []
    for trial in trials:
        if not trial.completed:
            continue
        passes, ciou, floor = floor_check(trial, control_source) if control_source else (True, math.nan, math.nan)
        floor_rows.append({"arm": trial.arm, "seed": trial.seed, "ciou": ciou, "floor": floor, "passes": passes})
        if passes:
            counted[(trial.arm, trial.seed)] = trial
    rows = []
    for column in columns:
        split, _, name = column.partition("/")
        measure_name = name.removeprefix("probe/") if name.startswith("probe/") else None

        def value(trial: TrialData) -> float:
            return float(trial.scores.get(f"eval/{column}", math.nan))

        def sample(trial: TrialData) -> Any:
            rows_of = trial.rows.get(split)
            return row_columns(rows_of) if measure_name is not None and rows_of else value(trial)

        def measure(columns: dict, _name: str | None = measure_name) -> float:
            return probe_measure(columns, _name)

        for arm in arms:
            mine = {s: t for (a, s), t in counted.items() if a == arm and math.isfinite(value(t))}
            mean, low, high = mean_ci([value(t) for t in mine.values()])
            row = {"arm": arm, "column": column, "n": len(mine), "mean": mean, "ci_low": low, "ci_high": high}
            if arm != reference:
                refs = {s: t for (a, s), t in counted.items() if a == reference and math.isfinite(value(t))}
                seeds = sorted(set(mine) & set(refs))
                diffs = [value(mine[s]) - value(refs[s]) for s in seeds]
                d_mean, d_low, d_high = mean_ci(diffs)
                b_low, b_high, b_p = paired_bootstrap(
                    [sample(mine[s]) for s in seeds], [sample(refs[s]) for s in seeds], measure,
                    replicates=bootstrap, seed=bootstrap_seed,
                ) if seeds else (math.nan, math.nan, math.nan)
                row.update({"pairs": len(seeds), "diff": d_mean, "diff_low": d_low, "diff_high": d_high,
                            "p_paired_t": paired_t(diffs), "boot_low": b_low, "boot_high": b_high, "p_bootstrap": b_p})
            rows.append(row)
    floors = [r["floor"] for r in floor_rows if math.isfinite(r["floor"])]
    return {
        "reference": reference,
        "control_source": control_source,
        "columns": list(columns),
        "rows": rows,
        "floor": {
            "mean": float(np.mean(floors)) if floors else math.nan,
            "trials": len(floor_rows),
            "passed": sum(r["passes"] for r in floor_rows),
            "per_trial": floor_rows,
        },
        "bootstrap": bootstrap,
    }


# ------------------------------------------------------------------------------------- output
_FIELDS = ["arm", "column", "n", "mean", "ci_low", "ci_high", "pairs", "diff", "diff_low", "diff_high",
           "p_paired_t", "boot_low", "boot_high", "p_bootstrap"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def stats_csv(result: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_FIELDS)
    for row in result["rows"]:
        writer.writerow([_fmt(row.get(k)) for k in _FIELDS])
    return buffer.getvalue()


def stats_markdown(result: Mapping[str, Any]) -> str:
    floor = result["floor"]
    lines = [
        "## Paired statistics",
        "",
        f"Reference arm: **{result['reference']}**. Trials counted: {floor['passed']} of {floor['trials']} "
        f"finished trials are above the expression-ignoring floor on `{result['control_source']}` "
        f"(floor cIoU, mean over trials: {_fmt(floor['mean'])} %).",
        "Mean with 95 % t interval over seeds; Δ = arm − reference over paired seeds, 95 % t interval and "
        f"paired t-test p; bootstrap ({result['bootstrap']} replicates, seeds and objects resampled) 95 % "
        "interval and p.",
        "",
        "| column | arm | n | mean [95 % CI] | pairs | Δ [95 % CI] | p (paired t) | Δ bootstrap 95 % CI | p (bootstrap) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        interval = f"{_fmt(row['mean'])} [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
        if "diff" in row:
            diff = f"{_fmt(row['diff'])} [{_fmt(row['diff_low'])}, {_fmt(row['diff_high'])}]"
            boot = f"[{_fmt(row['boot_low'])}, {_fmt(row['boot_high'])}]"
            rest = f"{row['pairs']} | {diff} | {_fmt(row['p_paired_t'])} | {boot} | {_fmt(row['p_bootstrap'])}"
        else:
            rest = "— | (reference) | | |"
        lines.append(f"| {row['column']} | {row['arm']} | {row['n']} | {interval} | {rest} |")
    return "\n".join(lines) + "\n"


def stats_plot(result: Mapping[str, Any], path: Path) -> None:
    """One panel per column: each arm's mean with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = result["columns"]
    fig, axes = plt.subplots(1, max(1, len(columns)), figsize=(4 * max(1, len(columns)), 3.2), squeeze=False)
    for ax, column in zip(axes[0], columns):
        rows = [r for r in result["rows"] if r["column"] == column]
        means = [r["mean"] for r in rows]
        errors = [[r["mean"] - r["ci_low"] if math.isfinite(r["ci_low"]) else 0 for r in rows],
                  [r["ci_high"] - r["mean"] if math.isfinite(r["ci_high"]) else 0 for r in rows]]
        ax.errorbar(range(len(rows)), means, yerr=errors, fmt="o", capsize=4)
        ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=30, ha="right")
        ax.set_title(column, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_statistics_files(result: Mapping[str, Any], out: Path) -> list[Path]:
    """stats.md, stats.csv, stats.json and stats.png in ``out``; returns their paths."""
    import json

    files = [out / "stats.md", out / "stats.csv", out / "stats.json", out / "stats.png"]
    files[0].write_text(stats_markdown(result))
    files[1].write_text(stats_csv(result))
    files[2].write_text(json.dumps(result, indent=1))
    stats_plot(result, files[3])
    return files


def stats_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Flat metrics for the sweep's MLflow parent run: ``stats/<arm>/<column>/<field>`` (characters
    MLflow refuses in a metric name, such as the ``+`` of ``+cma``, become ``_``)."""
    out = {"stats/floor_mean": result["floor"]["mean"], "stats/trials_counted": float(result["floor"]["passed"])}
    for row in result["rows"]:
        for key in ("mean", "ci_low", "ci_high", "diff", "p_paired_t", "p_bootstrap"):
            value = row.get(key)
            if isinstance(value, float) and math.isfinite(value):
                out[_metric_name(f"stats/{row['arm']}/{row['column']}/{key}")] = value
    return out


def _metric_name(name: str) -> str:
    return re.sub(r"[^\w./\- ]", "_", name)
