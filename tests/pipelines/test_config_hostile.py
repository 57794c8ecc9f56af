"""Config values that would validate but cannot run, and hostile config files: each is a
``ConfigError`` (exit status 2) naming the file or key, raised at load, before Ray starts."""

from __future__ import annotations

import pytest

import pipelines.config as config_module
from pipelines.config import load_experiment, parse_overrides
from pipelines.config_errors import ConfigError
from pipelines.config_yaml import MAX_EXPANDED_NODES, expanded_size

# The values that validated before but cannot run (NaN, negative CPUs, ``true`` as a number, an
# unknown format, ...) are kinds of the hostile corpus (tests/salma/data/hostile_corpus.py,
# CONFIG_KINDS); these are the loader's own cases.


def test_the_defaults_and_ordinary_values_still_load():
    cfg = load_experiment(None, ["train.lr=1e-4", "train.betas=[0.9,0.95]", "data.cpus_per_task=0.25",
                                 "train.cpus_per_worker=1", "train.max_failures=2"])
    assert cfg.train.betas == (0.9, 0.95) and cfg.train.cpus_per_worker == 1.0


def test_a_key_set_inside_a_value_is_a_config_error():
    with pytest.raises(ConfigError, match="sets a key inside train, which another override sets to 5"):
        parse_overrides(["train=5", "train.max_steps=7"])
    with pytest.raises(ConfigError, match="not a dotted key path"):
        parse_overrides(["train..max_steps=7"])


def test_a_folder_as_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; pass a YAML file"):
        load_experiment(tmp_path)


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  lr: 1.0e-4\n  max_steps: 5\n  lr: 3.0e-4\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: line 4: key 'lr' is given twice \(first on line 2\)"):
        load_experiment(path)
    path.write_text("train: {lr: 1.0e-4, lr: 2.0e-4}\n")
    with pytest.raises(ConfigError, match="key 'lr' is given twice"):
        load_experiment(path)


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_an_alias_bomb_is_refused_before_anything_walks_it(tmp_path, monkeypatch):
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)

    def never(*args, **kwargs):
        raise AssertionError("the expanded document reached validation")

    monkeypatch.setattr(config_module.ExperimentConfig, "model_validate", never)
    with pytest.raises(ConfigError, match="expand to more than"):
        load_experiment(path)
    # The measure visits each distinct node once: its memo holds the file's nodes (a few
    # hundred), not the 9**9 values the aliases expand to.
    import yaml

    node = yaml.compose(BILLION_LAUGHS)
    assert expanded_size(node) == MAX_EXPANDED_NODES + 1
    distinct = _distinct_nodes(node)
    assert distinct < 200


def _distinct_nodes(node) -> int:
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n.value, list):
            stack.extend(part for item in n.value for part in (item if isinstance(item, tuple) else (item,)))
    return len(seen)


def test_a_small_alias_is_still_fine(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("train: &t {max_steps: 3}\neval: {num_key_frames: 2}\n")
    assert load_experiment(path).train.max_steps == 3
