"""Errors for people: every ``salma`` subcommand prints a problem with what was asked for in one
or two lines (which file or key, how to fix it), exits with status 2, and shows the traceback
only with ``--debug``. All of these fail before any model, Ray or MLflow work starts."""

from __future__ import annotations

import pytest

from pipelines.cli import EXIT_USER_ERROR, main, user_error_message
from pipelines.config_errors import ConfigError
from salma.data.errors import DatasetFormatError


def _fails(capsys, *argv: str) -> list[str]:
    """Run ``salma argv``, expect status 2; returns the lines printed to stderr."""
    assert main(list(argv)) == EXIT_USER_ERROR
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3 and lines[-1] == "(run again with --debug for the full traceback)", lines
    return lines[:-1]


def test_train_missing_config_file(capsys, tmp_path):
    [line] = _fails(capsys, "train", "--config", str(tmp_path / "nope.yaml"))
    assert line == f"salma train: experiment config {tmp_path / 'nope.yaml'} does not exist"


def test_train_typo_in_a_key_names_the_closest_valid_one(capsys):
    [line] = _fails(capsys, "train", "--config", "experiments/quickstart.yaml", "train.max_step=10")
    assert line == "salma train: override: train.max_step: unknown key; did you mean train.max_steps?"
    [line] = _fails(capsys, "train", "model.mba.topk=3")
    assert "model.mba.topk: unknown key; did you mean model.mba.topk_tokens?" in line


def test_typo_in_the_yaml_names_the_file(capsys, tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("# salma train --config x.yaml\ntraen:\n  max_steps: 3\n")
    [line] = _fails(capsys, "train", "--config", str(bad))
    assert line == f"salma train: {bad}: traen: unknown key; did you mean train?"


def test_override_without_equals_and_bad_value(capsys):
    [line] = _fails(capsys, "quickstart", "train.max_steps")
    assert "override 'train.max_steps' is not of the form key.path=value" in line
    [line] = _fails(capsys, "train", "model.mba.tau=abc")
    assert line.startswith("salma train: override: model.mba.tau: ") and "'abc'" in line


def test_train_missing_dataset_folder_names_the_file(capsys, tmp_path):
    missing = tmp_path / "no_such_dataset"
    [line] = _fails(capsys, "train", f"workdir={tmp_path / 'runs'}", "tracking.enabled=false", "train.num_workers=0",
                    f"data.sources=[{{name: mine, format: own_data, root: {missing}}}]")
    assert line == f"salma train: {missing / 'train.jsonl'}: file not found (write one JSON object per line: see salma.data.own_data)"


def test_tune_missing_sweep_file(capsys, tmp_path):
    [line] = _fails(capsys, "tune", "--config", str(tmp_path / "sweep.yaml"))
    assert "sweep.yaml does not exist" in line


def test_infer_bad_dataset_spec_model_and_folder(capsys, tmp_path):
    [line] = _fails(capsys, "infer", "--model", "tiny", "--dataset", "coco:/x", "--split", "val", "--out", str(tmp_path))
    assert "unknown format 'coco'" in line and "own_data" in line
    [line] = _fails(capsys, "infer", "--model", str(tmp_path / "nomodel"), "--dataset", f"own_data:{tmp_path}",
                    "--split", "val", "--out", str(tmp_path / "o"))
    assert "is not a folder and not a preset" in line
    [line] = _fails(capsys, "infer", "--model", "tiny", "--dataset", f"mevis:{tmp_path / 'mevis'}", "--split", "valid_u",
                    "--out", str(tmp_path / "o"), "--num-actors", "0")
    assert line == f"salma infer: {tmp_path / 'mevis' / 'valid_u' / 'meta_expressions.json'}: file not found"


def test_evaluate_a_folder_without_predictions(capsys, tmp_path):
    [line] = _fails(capsys, "evaluate", "--pred", str(tmp_path), "--no-tracking")
    assert f"{tmp_path} has no run_info.json; pass --dataset FORMAT:ROOT and --split" in line


def test_export_a_folder_without_checkpoints(capsys, tmp_path):
    [line] = _fails(capsys, "export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"), "--no-tracking")
    assert "is neither a checkpoint nor a run folder with one" in line


def test_segment_missing_input(capsys, tmp_path):
    [line] = _fails(capsys, "segment", str(tmp_path / "photo.jpg"), "the cat", "--model", "tiny")
    assert line == f"salma segment: file not found: {tmp_path / 'photo.jpg'}"


def test_unknown_command_and_bad_arguments_exit_2(capsys):
    assert main(["trian"]) == EXIT_USER_ERROR
    assert "unknown command 'trian'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["data", "synth"])  # argparse: --out is required
    assert exit_.value.code == 2
    assert "usage: salma data synth" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--debug", "train", "--config", str(tmp_path / "nope.yaml")])
    with pytest.raises(ConfigError, match="did you mean train.max_steps"):
        main(["--debug", "train", "train.max_step=3"])


def test_errors_from_ray_workers_are_found_inside_their_wrappers(tmp_path):
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    inner = DatasetFormatError(tmp_path / "mask_dict.json", "not valid JSON")
    wrapped = WorkerGroupError("worker failed", {0: UserExceptionWithTraceback(inner, "Traceback ...")})
    assert user_error_message(wrapped) == f"{tmp_path / 'mask_dict.json'}: not valid JSON"
    assert user_error_message(RuntimeError("a bug")) is None  # not the user's: the traceback is shown
