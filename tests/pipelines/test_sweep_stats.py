"""Sweep statistics on known data: t intervals, the paired t-test against a closed form, the
paired bootstrap, the floor rule, and the table / CSV / plot / metric outputs."""

from __future__ import annotations

import csv
import io
import math

import pytest
from scipy import stats as scipy_stats

from pipelines.sweep_stats import (
    TrialData,
    mean_ci,
    paired_bootstrap,
    paired_t,
    stats_csv,
    stats_markdown,
    stats_metrics,
    stats_plot,
    sweep_statistics,
)
from salma.drift_measures import row_columns


def test_mean_ci_by_hand():
    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # t_{0.975, 2} = 4.302653, sd = 1
    assert (mean, low, high) == pytest.approx((2.0, 2.0 - half, 2.0 + half), abs=1e-5)
    assert math.isnan(mean_ci([5.0])[1]) and math.isnan(mean_ci([])[0])


def test_paired_t_against_the_two_degree_closed_form():
    # d = [1, 2, 6]: mean 3, sd sqrt(7), t = 3 / (sqrt(7) / sqrt(3)); with 2 degrees of freedom the
    # two-sided p-value is 1 - |t| / sqrt(t^2 + 2).
    t = 3 / (math.sqrt(7) / math.sqrt(3))
    assert paired_t([1.0, 2.0, 6.0]) == pytest.approx(1 - t / math.sqrt(t * t + 2), abs=1e-10)
    assert paired_t([1.0, 2.0, 6.0]) == pytest.approx(0.18848, abs=1e-4)
    a, b = [0.3, 0.5, 0.2, 0.9, 0.4], [0.1, 0.45, 0.25, 0.5, 0.2]
    assert paired_t([x - y for x, y in zip(a, b)]) == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    assert paired_t([0.0, 0.0]) == 1.0 and math.isnan(paired_t([1.0]))


def _rows(on_clutter: list[float]) -> list[dict[str, float]]:
    return [{"intersection": 1.0, "union": 2.0, "floor_intersection": 1.0, "floor_union": 3.0, "pred_area": 10.0,
             "pred_on_clutter": c, "clutter_area": 20.0, "seg_attention_clutter": 1.0,
             "language_update_clutter": math.nan} for c in on_clutter]


def test_paired_bootstrap_on_constant_and_row_level_differences():
    low, high, p = paired_bootstrap([1.5, 2.5, 3.5], [0.5, 1.5, 2.5], None, replicates=200, seed=0)
    assert (low, high, p) == pytest.approx((1.0, 1.0, 0.0))
    share = lambda c: c["pred_on_clutter"].sum() / c["pred_area"].sum()  # noqa: E731
    arm = [row_columns(_rows([3.0, 4.0, 5.0, 2.0])) for _ in range(4)]
    ref = [row_columns(_rows([1.0, 1.0, 2.0, 0.0])) for _ in range(4)]
    low, high, p = paired_bootstrap(arm, ref, share, replicates=500, seed=1)
    assert 0 < low <= 0.25 <= high and p < 0.01  # the true difference: (14 - 4) / 40 = 0.25
    same = paired_bootstrap(ref, ref, share, replicates=200, seed=1)
    assert same[0] == same[1] == 0.0 and same[2] == 1.0


def _trials() -> list[TrialData]:
    trials = []
    for seed in range(5):
        for arm, shift in (("baseline", 0.0), ("learned", 0.1), ("oracle", -0.2)):
            ciou = 10.0 if (arm, seed) == ("oracle", 4) else 60.0  # one trial below the floor
            scores = {"eval/control/probe/ciou": ciou, "eval/control/probe/floor_ciou": 40.0,
                      "eval/lure/probe/lure_share": 0.3 + shift + 0.01 * seed}
            on_clutter = [3.0 + 10 * shift, 3.0 + 10 * shift + seed * 0.1]
            trials.append(TrialData(arm, seed, True, scores, {"lure": _rows(on_clutter)}))
    trials.append(TrialData("learned", 9, False, {}, {}))  # stopped early: never counted
    return trials


def test_sweep_statistics_pairs_seeds_and_applies_the_floor(tmp_path):
    result = sweep_statistics(_trials(), arms=["baseline", "learned", "oracle"], reference="baseline",
                              columns=["lure/probe/lure_share"], control_source="control", bootstrap=300)
    assert result["floor"]["trials"] == 15 and result["floor"]["passed"] == 14 and result["floor"]["mean"] == 40.0
    rows = {r["arm"]: r for r in result["rows"]}
    assert rows["baseline"]["n"] == 5 and "diff" not in rows["baseline"]
    assert rows["learned"]["pairs"] == 5 and rows["learned"]["diff"] == pytest.approx(0.1)
    assert rows["learned"]["p_paired_t"] < 1e-10  # the same difference on every seed (up to rounding)
    assert rows["oracle"]["n"] == 4 and rows["oracle"]["pairs"] == 4 and rows["oracle"]["diff"] == pytest.approx(-0.2)
    assert rows["learned"]["boot_low"] > 0 and rows["oracle"]["boot_high"] < 0
    markdown = stats_markdown(result)
    assert "14 of 15 finished trials are above the expression-ignoring floor on `control`" in markdown
    assert "| lure/probe/lure_share | learned | 5 |" in markdown
    parsed = list(csv.DictReader(io.StringIO(stats_csv(result))))
    assert [r["arm"] for r in parsed] == ["baseline", "learned", "oracle"] and parsed[0]["p_paired_t"] == ""
    stats_plot(result, tmp_path / "stats.png")
    assert (tmp_path / "stats.png").stat().st_size > 0
    metrics = stats_metrics(result)
    assert metrics["stats/trials_counted"] == 14.0
    assert metrics["stats/learned/lure/probe/lure_share/diff"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not one of the arms"):
        sweep_statistics(_trials(), arms=["learned"], reference="baseline", columns=[], control_source=None)


def test_metric_names_mlflow_accepts():
    result = sweep_statistics([TrialData("+cma", 0, True, {"eval/a/ciou": 1.0})], arms=["+cma"], reference="+cma",
                              columns=["a/ciou"], control_source=None, bootstrap=10)
    assert "stats/_cma/a/ciou/mean" in stats_metrics(result)


def test_the_sweep_writes_its_statistics_from_the_trial_folders(tmp_path):
    import json

    from pipelines.drift_probe import PROBE_FILE
    from pipelines.tune import TRIALS_DIR, TrialOutcome, build_sweep, write_statistics

    experiment = {"model": {"preset": "tiny"}, "train": {"num_workers": 1, "max_steps": 8},
                  "data": {"eval_sources": [{"name": "lure", "format": "refcoco", "root": "x", "split": "lure"}]}}
    sweep = build_sweep({"variants": {"baseline": {"model.mba.enabled": False}, "learned": {}}, "seeds": [0, 1, 2],
                         "drift_probe": True, "stats": {"reference": "baseline", "columns": ["lure/probe/lure_share"],
                                                        "control_source": "control", "bootstrap": 100}},
                        experiment, default_name="d", where="d.yaml")
    outcomes = []
    for trial in _trials():
        if trial.arm == "oracle" or not trial.completed:
            continue
        trial_id = f"{trial.arm}-{trial.seed}"
        folder = tmp_path / TRIALS_DIR / trial_id
        folder.mkdir(parents=True)
        (folder / PROBE_FILE).write_text(json.dumps(trial.rows))
        outcomes.append(TrialOutcome(trial_id, trial.arm, trial.seed, 0.0, 8, 8, "completed", dict(trial.scores)))
    files, metrics = write_statistics(sweep, outcomes, str(tmp_path))
    assert {f.name for f in files} == {"stats.md", "stats.csv", "stats.json", "stats.png"}
    saved = json.loads((tmp_path / "stats.json").read_text())
    learned = next(r for r in saved["rows"] if r["arm"] == "learned")
    assert learned["pairs"] == 5 and learned["boot_low"] > 0
    assert metrics["stats/learned/lure/probe/lure_share/diff"] == pytest.approx(0.1)


def test_the_drift_sweep_pairs_five_seeds_of_the_prior_arms():
    from pathlib import Path

    from pipelines.config import ExperimentConfig
    from pipelines.config_yaml import read_config_file
    from pipelines.tune import load_sweep

    folder = Path(__file__).resolve().parents[2] / "experiments/ablations"
    sweep = load_sweep(folder / "drift.yaml")
    labels = [c.label for c in sweep.configurations]
    assert labels == ["baseline", "uniform", "learned", "oracle"] and len(sweep.settings.seeds) >= 5
    resolved = {c.label: sweep.trial_config(c.overrides, 0) for c in sweep.configurations}
    assert not resolved["baseline"].model_config_resolved.mba.enabled
    assert [resolved[a].model_config_resolved.mba.prior for a in labels[1:]] == ["uniform", "learned", "oracle"]
    cfg = resolved["learned"]
    assert cfg.data.synthetic.clutter.eval_images >= 1000
    assert {s.split for s in cfg.data.sources} == {"clutter_train"}
    # every arm starts from the export of drift_base.yaml: a Sa2VA-style model (no MBA) trained on
    # the same data with SAM-2 pre-trained first
    assert all(c.model_config_resolved.init_from == "data/drift_base" for c in resolved.values())
    assert not cfg.sam_pretrain.enabled
    base = ExperimentConfig.model_validate(read_config_file(folder / "drift_base.yaml"))
    assert not base.model_config_resolved.mba.enabled and base.sam_pretrain.enabled
    assert base.data.model_dump(exclude={"cpus_per_task"}) == cfg.data.model_dump(exclude={"cpus_per_task"})
    assert sweep.settings.drift_probe and sweep.settings.stats.reference == "baseline"
    assert sweep.settings.stats.control_source == "control_img"
