"""Every shipped experiment YAML loads, validates, and starts with the command that runs it."""

from pathlib import Path

import pytest
import yaml

from pipelines.config import load_experiment

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").rglob("*.yaml"))


def test_there_are_experiments():
    names = {p.name for p in EXPERIMENTS}
    assert {"quickstart.yaml", "salma_1b.yaml", "sa2va_1b.yaml"} <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_experiment_validates_and_names_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("salma " in first or "make " in first), first
    raw = yaml.safe_load(path.read_text())
    if "search_space" in raw or "sweep" in raw:  # ablation sweeps are validated by the tune tests
        pytest.skip("sweep file")
    cfg = load_experiment(path)
    cfg.model_config_resolved  # the model part resolves against its preset


def test_baseline_differs_from_salma_only_in_mba():
    salma = load_experiment(ROOT / "experiments/salma_1b.yaml").resolved()
    sa2va = load_experiment(ROOT / "experiments/sa2va_1b.yaml").resolved()
    assert salma["model"]["mba"]["enabled"] and not sa2va["model"]["mba"]["enabled"]
    salma["model"]["mba"]["enabled"] = False
    salma["name"] = sa2va["name"]
    assert salma == sa2va


def test_unknown_keys_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("# salma train --config bad.yaml\ntrain:\n  max_stpes: 3\n")
    with pytest.raises(ValueError, match="max_stpes"):
        load_experiment(bad)
    with pytest.raises(ValueError, match="not of the form"):
        load_experiment(None, ["train.max_steps"])


def test_the_sa2va_start_differs_from_salma_only_in_where_the_weights_come_from():
    salma = load_experiment(ROOT / "experiments/salma_1b.yaml").resolved()
    start = load_experiment(ROOT / "experiments/salma_1b_from_sa2va.yaml").resolved()
    assert start["model"]["init_from"] and start["model"]["mllm"]["path"] is None
    assert start["model"]["sam"]["version"] == "2.0" and start["model"]["sam"]["checkpoint"] is None
    for cfg in (salma, start):
        cfg["name"] = "x"
        cfg["model"]["init_from"] = cfg["model"]["mllm"]["path"] = cfg["model"]["sam"]["checkpoint"] = None
        cfg["model"]["sam"]["version"] = "2.0"
    assert salma == start
