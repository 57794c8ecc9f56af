"""Ablation sweeps (``pipelines.tune``): every shipped sweep YAML validates; the schema rejects what
it should; the summary's statistics and compute accounting; and a real 2-trial sweep of the tiny
model whose driver is SIGKILLed after the first trial finished, then resumed with ``--resume``:
the finished trial is not rerun, and the sweep writes its table, plot and best config and logs a
parent MLflow run with one child per trial."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_experiment
from pipelines.tune import (
    BEST_YAML,
    EVAL_FILE,
    STATE_FILE,
    SUMMARY_CSV,
    SUMMARY_MD,
    SUMMARY_PNG,
    TRIALS_CSV,
    TRIALS_DIR,
    TrialOutcome,
    close_stopped_children,
    build_scheduler,
    build_sweep,
    load_sweep,
    summarize,
    tune,
    with_absolute_data_paths,
    write_results,
)
from pipelines.tune.results import _trial_eval
from salma.data.errors import DatasetFormatError

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = sorted(p for p in (ROOT / "experiments" / "ablations").glob("*.yaml") if "sweep" in yaml.safe_load(p.read_text()))
ONE_B = ["base=../salma_1b.yaml", "sweep.asha.grace_period=4000", "sweep.resources_per_trial.CPU=1"]


# ------------------------------------------------------------------------------ the YAML files
def test_the_paper_ablations_are_shipped():
    names = {p.stem for p in SWEEPS}
    assert {"components", "topk", "film", "gate_vs_bias", "tau", "language_tokens"} <= names


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_ablation_sweep_validates_at_both_scales(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith(f"# salma tune --config experiments/ablations/{path.name}"), lines[0]
    assert lines[1].startswith(f"# salma tune --config experiments/ablations/{path.name} base=../salma_1b.yaml"), lines[1]
    tiny = load_sweep(path)  # validates every (configuration, seed) as an ExperimentConfig
    assert tiny.num_trials >= 2 * len(tiny.settings.seeds)
    for c in tiny.configurations:
        assert tiny.trial_config(c.overrides, 0).model_config_resolved.preset == "tiny"
    overrides_1b = lines[1].split("--config", 1)[1].split("(", 1)[0].split()[1:]
    big = load_sweep(path, overrides_1b)
    assert big.trial_config(big.configurations[0].overrides, 0).model_config_resolved.preset == "salma-1b"


def test_components_sweep_adds_one_component_at_a_time():
    sweep = load_sweep(ROOT / "experiments/ablations/components.yaml")
    resolved = [sweep.trial_config(c.overrides, 0).model_config_resolved for c in sweep.configurations]
    assert [c.label for c in sweep.configurations] == ["baseline", "+cma", "+mba_gate", "+tmc", "+boundary"]
    baseline, cma, gate, tmc, boundary = resolved
    assert not baseline.mba.enabled and baseline.loss.tmc_weight == 0 and baseline.loss.boundary_weight == 0
    assert cma.mba.enabled and cma.mba.prior == "uniform"
    assert gate.mba.prior == "learned" and gate.mba.mode == "gate" and gate.loss.tmc_weight == 0
    assert tmc.loss.tmc_weight > 0 and tmc.loss.boundary_weight == 0
    assert boundary.loss.tmc_weight > 0 and boundary.loss.boundary_weight > 0


def test_topk_sweep_covers_all_tokens():
    sweep = load_sweep(ROOT / "experiments/ablations/topk.yaml")
    values = [sweep.trial_config(c.overrides, 0).model_config_resolved.mba.topk_tokens for c in sweep.configurations]
    assert values == [1, 2, 4, None]


# ------------------------------------------------------------------------------ the schema
def _experiment(**train):
    return {"model": {"preset": "tiny"}, "train": {"num_workers": 1, **train},
            "data": {"eval_sources": [{"name": "v", "format": "refcoco", "root": "x", "split": "val"}]}}


@pytest.mark.parametrize(
    ("sweep", "experiment", "message"),
    [
        ({"search_space": {"model.mba.tua": [1.0]}}, _experiment(), "tua"),
        ({"serch_space": {}}, _experiment(), "serch_space"),
        ({"search_space": {"model.mba.tau": {"uniform": [0.1, 1.0]}}}, _experiment(), "needs mode: random"),
        ({"mode": "random", "search_space": {"model.mba.tau": {"loguniform": [0.0, 1.0]}}}, _experiment(), "low > 0"),
        ({"search_space": {"model.mba.tau": {"normal": [0, 1]}}}, _experiment(), "use a list of values"),
        ({"seeds": [0, 0]}, _experiment(), "distinct"),
        ({}, {**_experiment(), "train": {"num_workers": 0}}, "local mode"),
        ({}, {**_experiment(), "data": {}}, "needs data.eval_sources"),
        ({"asha": {"grace_period": 50}}, _experiment(max_steps=10), "exceeds max_t"),
        ({"search_space": {"model.mba.tau": [1.0, 1.0]}}, _experiment(), "identical"),
        ({"resources_per_trial": {"CPU": 0}}, _experiment(), "reserves nothing"),
        ({"evaluate": True, "metric": "loss/total"}, {**_experiment(), "data": {}}, "sweep.evaluate / sweep.drift_probe need"),
        ({"stats": {"reference": "a", "columns": ["v/probe/ciou"]}}, _experiment(), "set sweep.drift_probe"),
        ({"drift_probe": True, "variants": {"a": {}, "b": {"model.mba.tau": 2.0}},
          "stats": {"reference": "c", "columns": ["v/probe/ciou"]}}, _experiment(), "reference='c' is not one of"),
    ],
)
def test_invalid_sweeps_are_rejected_with_the_reason(sweep, experiment, message):
    with pytest.raises(ValueError, match=message):
        build_sweep(sweep, experiment, default_name="bad", where="bad.yaml")


def test_random_draws_are_fixed_by_the_search_seed_and_shared_by_seeds():
    spec = {"mode": "random", "num_samples": 3, "seeds": [0, 1],
            "search_space": {"model.mba.tau": {"loguniform": [0.1, 10.0]}, "model.mba.use_film": [True, False]}}
    first = build_sweep(spec, _experiment(), default_name="r", where="r.yaml")
    again = build_sweep(spec, _experiment(), default_name="r", where="r.yaml")
    assert first.configurations == again.configurations and first.num_trials == 6
    assert all(0.1 <= c.overrides["model.mba.tau"] <= 10.0 for c in first.configurations)


def test_sweep_file_with_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("# salma train --config base.yaml\nmodel: {preset: tiny}\ntrain: {max_steps: 7}\n")
    (tmp_path / "s.yaml").write_text(
        "# salma tune --config s.yaml\nbase: base.yaml\ntrain: {num_workers: 1}\n"
        "data: {eval_sources: [{name: v, format: refcoco, root: x, split: val}]}\n"
        "sweep: {search_space: {model.mba.use_film: [true, false]}, seeds: [3]}\n"
    )
    sweep = load_sweep(tmp_path / "s.yaml", ["train.max_steps=9", "sweep.seeds=[1, 2]"])
    cfg = sweep.trial_config(sweep.configurations[0].overrides, 2)
    assert (cfg.train.max_steps, cfg.train.num_workers, cfg.train.seed, cfg.data.seed) == (9, 1, 2, 2)
    assert cfg.model_config_resolved.mba.use_film and sweep.num_trials == 4
    with pytest.raises(ValueError, match="no sweep: section"):
        load_sweep(tmp_path / "base.yaml")


def test_a_mapping_given_on_the_command_line_or_as_a_sweep_value_replaces_the_base_s(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {preset: tiny}\ntrain: {lr_multipliers: {sam.sam: 0.3}}\n")
    (tmp_path / "s.yaml").write_text(
        "base: base.yaml\ndata: {eval_sources: [{name: v, format: refcoco, root: x, split: val}]}\n"
        "sweep: {search_space: {train.lr_multipliers: [{}, {mllm: 0.5}]}, seeds: [0]}\n"
    )
    sweep = load_sweep(tmp_path / "s.yaml")
    assert [sweep.trial_config(c.overrides, 0).train.lr_multipliers for c in sweep.configurations] == [{}, {"mllm": 0.5}]
    (tmp_path / "t.yaml").write_text(
        "base: base.yaml\ndata: {eval_sources: [{name: v, format: refcoco, root: x, split: val}]}\n"
        "sweep: {search_space: {train.max_steps: [5]}, seeds: [0]}\n"
    )
    sweep = load_sweep(tmp_path / "t.yaml", ["train.lr_multipliers={}"])
    assert sweep.trial_config(sweep.configurations[0].overrides, 0).train.lr_multipliers == {}


def test_relative_data_paths_resolve_against_the_launch_directory(synthetic_data, monkeypatch):
    # Trials run in Tune's trial folders: the driver resolves the paths before any trial starts.
    monkeypatch.chdir(synthetic_data)
    experiment = {"model": {"preset": "tiny"}, "train": {"num_workers": 1},
                  "data": {"sources": [{"name": "r", "format": "refcoco", "root": "refer/refcoco"}],
                           "eval_sources": [{"name": "v", "format": "refcoco", "root": "refer/refcoco", "split": "val"}]}}
    sweep = with_absolute_data_paths(build_sweep({"search_space": {"model.mba.use_film": [False, True]}}, experiment,
                                                 default_name="s", where="s.yaml"))
    monkeypatch.chdir("/")
    cfg = sweep.trial_config(sweep.configurations[1].overrides, 0)
    wanted = str(synthetic_data.resolve() / "refer" / "refcoco")
    assert cfg.data.sources[0].root == cfg.data.eval_sources[0].root == wanted
    assert sweep.source["data"]["sources"][0]["root"] == wanted  # what sweep.yaml and --resume use
    experiment["data"]["sources"][0]["root"] = "missing/refcoco"
    monkeypatch.chdir(synthetic_data)
    with pytest.raises(DatasetFormatError, match="missing/refcoco.*file not found"):
        with_absolute_data_paths(build_sweep({"search_space": {"model.mba.use_film": [False]}}, experiment,
                                             default_name="s", where="s.yaml"))


def test_sam_pretraining_runs_once_on_the_driver_and_trials_reuse_it(synthetic_data, tmp_path, monkeypatch):
    from pipelines.train import prepare_data

    monkeypatch.chdir(tmp_path)
    experiment = {"model": {"preset": "tiny"}, "train": {"num_workers": 1},
                  "sam_pretrain": {"enabled": True, "out": "sam2.pt", "steps": 2, "batch_size": 2},
                  "data": {"sources": [{"name": "r", "format": "refcoco", "root": str(synthetic_data / "refer" / "refcoco")}],
                           "eval_sources": [{"name": "v", "format": "refcoco", "root": str(synthetic_data / "refer" / "refcoco"),
                                             "split": "val"}]}}
    sweep = with_absolute_data_paths(build_sweep({"search_space": {"model.mba.use_film": [False, True]}}, experiment,
                                                 default_name="s", where="s.yaml"))
    checkpoint = tmp_path / "sam2.pt"
    written = checkpoint.stat().st_mtime_ns
    monkeypatch.chdir("/")  # a trial's working directory
    cfg = sweep.trial_config(sweep.configurations[1].overrides, 0)
    assert cfg.sam_pretrain.out == str(checkpoint) and sweep.source["sam_pretrain"]["out"] == str(checkpoint)
    assert prepare_data(cfg).model_config_resolved.sam.checkpoint == str(checkpoint)
    assert checkpoint.stat().st_mtime_ns == written  # reused, not trained again


def test_a_local_init_from_folder_is_resolved_on_the_driver_and_a_hub_id_is_kept(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exports" / "base").mkdir(parents=True)
    root = str(synthetic_data / "refer" / "refcoco")
    experiment = {"model": {"preset": "tiny", "init_from": "exports/base", "mllm": {"tokenizer": None}},
                  "train": {"num_workers": 1},
                  "data": {"sources": [{"name": "r", "format": "refcoco", "root": root}],
                           "eval_sources": [{"name": "v", "format": "refcoco", "root": root, "split": "val"}]}}
    sweep = with_absolute_data_paths(build_sweep({"search_space": {"model.mba.use_film": [False, True]}}, experiment,
                                                 default_name="s", where="s.yaml"))
    monkeypatch.chdir("/")  # a trial's working directory
    cfg = sweep.trial_config(sweep.configurations[1].overrides, 0)
    assert cfg.model_config_resolved.init_from == str(tmp_path / "exports" / "base")
    assert cfg.model_config_resolved.mba.use_film  # the variant's override still applies
    monkeypatch.chdir(tmp_path)
    experiment["model"]["init_from"] = "owner/name"  # no such folder here: a hub id, left as it is
    sweep = with_absolute_data_paths(build_sweep({"search_space": {"model.mba.use_film": [False]}}, experiment,
                                                 default_name="s", where="s.yaml"))
    assert sweep.trial_config(sweep.configurations[0].overrides, 0).model_config_resolved.init_from == "owner/name"


def _film_on_off(**settings):
    """A FiLM off/on sweep over seeds 0 and 1, 8 steps per trial, and its two labels."""
    sweep = build_sweep({"search_space": {"model.mba.use_film": [False, True]}, "seeds": [0, 1], **settings},
                        _experiment(max_steps=8), default_name="s", where="s.yaml")
    a, b = (c.label for c in sweep.configurations)
    return sweep, a, b


def test_summary_statistics_and_compute_accounting():
    sweep, a, b = _film_on_off()
    outcomes = [
        TrialOutcome("t0", a, 0, 1.0, 8, 8, "completed"), TrialOutcome("t1", a, 1, 2.0, 8, 8, "completed"),
        TrialOutcome("t2", b, 0, 0.5, 2, 8, "stopped"), TrialOutcome("t3", b, 1, 3.0, 8, 8, "completed"),
    ]
    summary = summarize(sweep, outcomes)
    row_a, row_b = summary["rows"]
    assert row_a["mean"] == 1.5 and math.isclose(row_a["std"], math.sqrt(0.5)) and row_a["steps"] == 16
    assert row_b["stopped"] == 1 and row_b["steps"] == 10
    # b has the lower mean, but one of its seeds was stopped early: only complete rows can win.
    assert summary["best"]["configuration"] == a and "every seed ran to the end" in summary["best_rule"]
    assert (summary["trial_steps"], summary["full_grid_steps"]) == (26, 32)


def test_best_configuration_when_asha_left_no_configuration_complete():
    sweep, a, b = _film_on_off()
    outcomes = [
        TrialOutcome("t0", a, 0, 0.9, 8, 8, "completed"), TrialOutcome("t1", a, 1, 2.0, 2, 8, "stopped"),
        TrialOutcome("t2", b, 0, 0.8, 8, 8, "completed"), TrialOutcome("t3", b, 1, 0.3, 4, 8, "stopped"),
    ]
    # b's stopped seed has the lowest value of all, at step 4: only the finished trials decide.
    summary = summarize(sweep, outcomes)
    assert summary["best"]["configuration"] == b and "best trial that did (t2, seed 0, 0.8000)" in summary["best_rule"]
    # No trial finished (all stopped or interrupted): the best mean of the last values, said so.
    stopped = [TrialOutcome(o.trial_id, o.configuration, o.seed, o.metric, 2, 8, "stopped") for o in outcomes]
    summary = summarize(sweep, stopped)
    assert summary["best"]["configuration"] == b and summary["best_rule"].startswith("no trial ran to the end")


def test_summary_aggregates_the_benchmark_scores_of_evaluated_trials(tmp_path):
    sweep, a, b = _film_on_off(evaluate=True)

    def scores(ciou, share):
        return {"eval/img/ciou": ciou, "eval/img/giou": 1.0, "eval/img/sentences": 60.0,
                "eval/vid/jf": ciou / 2, "eval/img/update_energy/target_share": share}

    outcomes = [
        TrialOutcome("t0", a, 0, 1.0, 8, 8, "completed", scores(40.0, 0.25)),
        TrialOutcome("t1", a, 1, 1.0, 8, 8, "completed", scores(50.0, 0.75)),
        TrialOutcome("t2", b, 0, 1.0, 2, 8, "stopped"),  # ASHA-stopped trials are never evaluated
        TrialOutcome("t3", b, 1, 1.0, 8, 8, "completed", scores(60.0, 0.5)),
    ]
    summary = summarize(sweep, outcomes)
    # Splits in reported order; within one, the order of sweep.eval_columns; unlisted names dropped.
    assert summary["eval_columns"] == ["eval/img/ciou", "eval/img/giou", "eval/img/update_energy/target_share", "eval/vid/jf"]
    row_a, row_b = summary["rows"]
    assert row_a["eval"]["eval/img/ciou"]["mean"] == 45.0 and row_a["eval"]["eval/vid/jf"]["mean"] == 22.5
    assert math.isclose(row_a["eval"]["eval/img/ciou"]["std"], math.sqrt(50.0))
    assert row_b["eval"]["eval/img/ciou"] == {"mean": 60.0, "std": 0.0, "n": 1}
    files = write_results(sweep, outcomes, summary, str(tmp_path))
    # trials.csv has every trial's own scores (the per-seed values behind the means).
    trials = list(csv.DictReader((tmp_path / TRIALS_CSV).open()))
    assert [t["eval/img/ciou"] for t in trials] == ["40.0", "50.0", "", "60.0"]
    assert trials[1]["eval/img/update_energy/target_share"] == "0.75" and trials[2]["status"] == "stopped"
    markdown = (tmp_path / SUMMARY_MD).read_text()
    assert "| img cIoU | img gIoU | img update-energy share | vid J&F | n |" in markdown
    assert f"| {a} | 45 ± 7.07 | 1 ± 0 | 0.5 ± 0.354 | 22.5 ± 3.54 | 2 |" in markdown
    header = (tmp_path / SUMMARY_CSV).read_text().splitlines()[0]
    assert header.endswith("eval/vid/jf_mean,eval/vid/jf_std,eval/vid/jf_n")
    assert tmp_path / SUMMARY_PNG in files and (tmp_path / SUMMARY_PNG).stat().st_size > 0


def test_trial_eval_file_is_read_and_a_broken_one_is_named(tmp_path):
    assert _trial_eval(tmp_path) == {}
    (tmp_path / EVAL_FILE).write_text('{"eval/img/ciou": 41.5}')
    assert _trial_eval(tmp_path) == {"eval/img/ciou": 41.5}
    (tmp_path / EVAL_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match=str(tmp_path / EVAL_FILE)):
        _trial_eval(tmp_path)


def test_asha_stops_a_weak_trial_at_its_rung_but_never_at_its_final_step():
    from dataclasses import asdict
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    sweep = build_sweep({"search_space": {"model.mba.tau": [1.0, 2.0, 3.0]}, "asha": {"grace_period": 2}},
                        _experiment(max_steps=4), default_name="a", where="a.yaml")
    scheduler = build_scheduler(sweep)
    scheduler.set_search_properties(sweep.settings.metric, sweep.settings.metric_mode)
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"configuration": asdict(c), "seed": 0})
              for i, c in enumerate(sweep.configurations)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)

    def report(trial, step, loss):
        return scheduler.on_trial_result(None, trial, {"step": step, "val/mask_loss": loss, "training_iteration": step // 2})

    assert report(trials[0], 2, 1.0) == TrialScheduler.CONTINUE
    assert report(trials[1], 2, 2.0) == TrialScheduler.STOP  # worse than the rung's cut-off
    # Plain ASHA stops every trial at max_t; at the final step that would kill a finished run.
    assert report(trials[2], 4, 9.0) == TrialScheduler.CONTINUE


def test_runs_of_stopped_trials_are_closed_as_killed(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("salma", artifact_location=(tmp_path / "art").as_uri())
    state = {"tracking_uri": uri, "sweep_id": "s1", "parent_run_id": None}

    def child(trial_id, status):
        run = client.create_run(experiment, tags={"salma.sweep_id": "s1", "salma.trial_id": trial_id})
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status=status)
        return run.info.run_id

    ids = {name: child(name, status) for name, status in
           [("stopped", "FAILED"), ("lost", "RUNNING"), ("failed", "FAILED"), ("done", "FINISHED")]}
    outcomes = [TrialOutcome(name, "c", 0, 1.0, 2, 4, status) for name, status in
                [("stopped", "stopped"), ("lost", "completed"), ("failed", "error"), ("done", "completed")]]
    close_stopped_children(state, outcomes)
    runs = {name: client.get_run(run_id) for name, run_id in ids.items()}
    assert runs["stopped"].info.status == "KILLED" and runs["stopped"].data.tags["salma.stopped_by"] == "asha"
    assert runs["lost"].info.status == "KILLED" and runs["lost"].data.tags["salma.stopped_by"] == "interrupted"
    assert runs["failed"].info.status == "FAILED" and runs["done"].info.status == "FINISHED"


# ------------------------------------------------------------------------------ a real sweep
def _trial_statuses(sweep_dir: Path) -> dict[str, str]:
    """Trial id → status, from Tune's own experiment state (what ``Tuner.restore`` reads)."""
    statuses = {}
    for state in sweep_dir.glob("experiment_state-*.json"):
        try:
            data = json.loads(state.read_text())
        except (json.JSONDecodeError, OSError):
            continue  # being rewritten
        for entry in data["trial_data"]:
            trial = json.loads(entry[0])
            statuses[trial["trial_id"]] = trial["status"]
    return statuses


def _wait_for_a_finished_trial(driver: subprocess.Popen, workdir: Path, log: Path, timeout: float) -> tuple[Path, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.poll() is not None:
            raise AssertionError(f"the sweep driver exited early ({driver.returncode}):\n{log.read_text()[-4000:]}")
        for sweep_dir in (workdir / "sweeps").glob("*"):
            done = [t for t, s in _trial_statuses(sweep_dir).items() if s == "TERMINATED"]
            if done:
                return sweep_dir, done[0]
        time.sleep(0.5)
    raise AssertionError("no trial finished in time")


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_resumes_after_the_driver_is_killed_and_writes_its_results(ray_cluster, synthetic_data, tmp_path):
    refcoco = synthetic_data / "refer" / "refcoco"
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "tiny", "workdir": str(tmp_path / "runs"), "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "model": {"preset": "tiny"},
        "data": {"num_frames": 2, "max_objects": 2, "cpus_per_task": 0.25,
                 "sources": [{"name": "refcoco", "format": "refcoco", "root": str(refcoco)}],
                 "eval_sources": [{"name": "refcoco_val", "format": "refcoco", "root": str(refcoco), "split": "val"}]},
        "train": {"num_workers": 1, "cpus_per_worker": 1, "batch_size_per_worker": 1, "max_steps": 4,
                  "checkpoint_every": 2, "log_every": 1, "lr": 1e-3, "startup_retries": 1},
        "eval": {"max_samples": 2, "max_new_tokens": 8},
        "sweep": {"search_space": {"model.mba.use_film": [False, True]}, "seeds": [0], "evaluate": True,
                  "asha": {"grace_period": 2, "reduction_factor": 2}, "resources_per_trial": {"CPU": 0.5}},
    }))
    # The driver joins the test's cluster ($RAY_ADDRESS, set by the fixture) and saves Tune's
    # experiment state at every step, so the first trial's end is on disk when we kill it.
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "PYTHONPATH": str(ROOT)}
    log = tmp_path / "driver.log"
    with open(log, "wb") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "pipelines.tune", "--config", str(sweep_file), "--workdir", str(tmp_path)],
            cwd=ROOT, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        sweep_dir, finished = _wait_for_a_finished_trial(driver, tmp_path, log, timeout=240)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    def runs_of(trial: str) -> list[Path]:
        return sorted(p for p in (sweep_dir / TRIALS_DIR / trial).iterdir() if p.is_dir())

    finished_runs = runs_of(finished)
    assert len(finished_runs) == 1 and (sweep_dir / TRIALS_DIR / finished / EVAL_FILE).is_file()
    first_attempt = json.loads((finished_runs[0] / "run.json").read_text())

    result = tune(resume=str(sweep_dir))

    # The finished trial was not rerun: the same single training run, with its single attempt.
    assert runs_of(finished) == finished_runs
    assert json.loads((finished_runs[0] / "run.json").read_text()) == first_attempt
    trials = (sweep_dir / TRIALS_CSV).read_text().splitlines()
    assert len(trials) == 3 and all(",completed" in line for line in trials[1:]), trials
    for name in (SUMMARY_MD, SUMMARY_CSV, SUMMARY_PNG):
        assert (sweep_dir / name).stat().st_size > 0
    assert "mba.use_film=False" in (sweep_dir / SUMMARY_MD).read_text()
    # Every trial ran to the end, so every trial was evaluated: the summary has its scores.
    assert result.summary["eval_columns"] == ["eval/refcoco_val/ciou", "eval/refcoco_val/giou"]
    assert all(r["eval"]["eval/refcoco_val/ciou"]["n"] == 1 for r in result.summary["rows"])
    assert "| refcoco_val cIoU | refcoco_val gIoU | n |" in (sweep_dir / SUMMARY_MD).read_text()
    assert (result.trial_steps, result.full_grid_steps) == (8, 8)
    best = load_experiment(sweep_dir / BEST_YAML)
    assert best.model_config_resolved.mba.use_film == (result.best_configuration == "mba.use_film=True")

    from mlflow import MlflowClient

    state = json.loads((sweep_dir / STATE_FILE).read_text())
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("salma").experiment_id])
    (parent,) = [r for r in runs if r.info.run_id == result.mlflow_run_id]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2  # the resumed trial reused its run
    assert parent.info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children)
    assert parent.data.metrics["sweep/trial_steps"] == 8
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {SUMMARY_MD, SUMMARY_CSV, SUMMARY_PNG, BEST_YAML}
    for child in children:
        assert "val/mask_loss" in child.data.metrics and "final/val/mask_loss" in child.data.metrics
        assert child.data.metrics["eval/refcoco_val/sentences"] >= 2  # 2 images scored, on the trial's run
        assert child.data.params["model.mba.use_film"] in ("True", "False")
