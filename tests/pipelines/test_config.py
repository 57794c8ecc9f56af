"""Experiment YAMLs that start from another one (``base:``)."""

from __future__ import annotations

import pytest

from pipelines.config import load_experiment
from pipelines.config_errors import ConfigError


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_base_chain_merges_mappings_and_replaces_other_values(tmp_path):
    _write(tmp_path / "recipes/root.yaml", """
name: root
train: {max_steps: 50, lr: 1.0e-3}
data:
  num_frames: 3
  sources: [{name: a, format: refcoco, root: /data/a, split: train}, {name: b, format: refcoco, root: /data/b, split: train}]
""")
    _write(tmp_path / "recipes/middle.yaml", "base: root.yaml\ntrain: {max_steps: 20}\n")
    leaf = _write(tmp_path / "mine/leaf.yaml", """
base: ../recipes/middle.yaml
name: leaf
data:
  sources: [{name: c, format: refcoco, root: /data/c, split: val}]
""")
    cfg = load_experiment(leaf, ["train.lr=2.0e-4"])
    assert cfg.name == "leaf"
    assert (cfg.train.max_steps, cfg.train.lr) == (20, 2.0e-4)  # nested keys merge; the override wins
    assert cfg.data.num_frames == 3  # inherited through two levels
    assert [s.name for s in cfg.data.sources] == ["c"]  # a list replaces the base's list


def test_an_override_replaces_a_mapping_and_a_dotted_one_changes_one_entry(tmp_path):
    path = _write(tmp_path / "e.yaml", "name: e\ntrain: {lr_multipliers: {sam.sam: 0.3, mllm: 0.5}}\n")
    assert load_experiment(path).train.lr_multipliers == {"sam.sam": 0.3, "mllm": 0.5}
    assert load_experiment(path, ["train.lr_multipliers={}"]).train.lr_multipliers == {}
    assert load_experiment(path, ["train.lr_multipliers={mba: 2.0}"]).train.lr_multipliers == {"mba": 2.0}
    changed = load_experiment(path, ["train.lr_multipliers.mllm=0.1"]).train.lr_multipliers
    assert changed == {"sam.sam": 0.3, "mllm": 0.1}
    # the file's other train settings stay
    assert load_experiment(path, ["train.lr_multipliers={}"]).train.max_steps == load_experiment(path).train.max_steps


def test_unknown_keys_in_a_derived_file_are_still_errors(tmp_path):
    _write(tmp_path / "root.yaml", "name: root\n")
    leaf = _write(tmp_path / "leaf.yaml", "base: root.yaml\ntrain: {max_step: 10}\n")
    with pytest.raises(ConfigError, match=r"train\.max_step.*max_steps"):
        load_experiment(leaf)


def test_a_missing_base_names_both_files(tmp_path):
    leaf = _write(tmp_path / "leaf.yaml", "base: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError) as err:
        load_experiment(leaf)
    assert str(leaf) in str(err.value) and "nowhere.yaml does not exist" in str(err.value)


def test_a_cycle_of_bases_is_an_error(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="already in the chain of bases"):
        load_experiment(tmp_path / "a.yaml")


@pytest.mark.parametrize("value", ["[a.yaml]", "3", "''"])
def test_base_must_be_a_path(tmp_path, value):
    leaf = _write(tmp_path / "leaf.yaml", f"base: {value}\n")
    with pytest.raises(ConfigError, match="base must be the path of another YAML file"):
        load_experiment(leaf)
