"""Errors for people: every ``salma`` subcommand prints a problem with what was asked for in one
or two lines (which file or key, how to fix it), exits with status 2, and shows the traceback
only with ``--debug``. All of these fail before any model, Ray or MLflow work starts."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines.cli import (
    COMMANDS,
    DATA_COMMANDS,
    EXIT_USER_ERROR,
    main,
    user_error_message,
)
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
    assert line == (f"salma train: {missing / 'train.jsonl'}: file not found (one JSON object per line, "
                    'e.g. {"image": "cat.jpg", "expression": "the cat"}: see docs/inference.md)')


def test_train_split_that_the_dataset_lacks_names_the_ones_it_has(capsys, tmp_path, synthetic_data):
    root = synthetic_data / "refer" / "refcoco"
    [line] = _fails(capsys, "train", f"workdir={tmp_path / 'runs'}", "tracking.enabled=false", "train.num_workers=0",
                    f"data.sources=[{{name: r, format: refcoco, root: {root}, split: tran}}]")
    assert line == (f"salma train: {root}: data source 'r' (refcoco, split tran) has no usable records; "
                    f"refcoco splits in {root}: drift, train, val")


def test_train_without_an_experiment_says_what_to_pass(capsys, tmp_path):
    [line] = _fails(capsys, "train", f"workdir={tmp_path / 'runs'}")
    assert line.startswith("salma train: no training data: data.sources is empty; pass an experiment with --config")
    assert not (tmp_path / "runs").exists()


def test_more_cpus_than_a_local_cluster_has_is_a_user_error(monkeypatch):
    import ray

    from pipelines.config import load_experiment
    from pipelines.train import _check_cpu_budget

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})  # the arithmetic, not Ray, is under test
    cfg = load_experiment("experiments/quickstart.yaml", ["train.cpus_per_worker=1"])
    _check_cpu_budget(cfg, local=False)  # a cluster may still grow: only a warning
    with pytest.raises(ConfigError) as raised:
        _check_cpu_budget(cfg, local=True)
    assert user_error_message(raised.value) == str(raised.value)
    assert "2 train workers x (train.cpus_per_worker=1 + data.encode_actors=1 x data.cpus_per_task=0.5" in str(raised.value)
    assert "need 3" in str(raised.value)


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
    for split in ("train", "valid"):  # the folder holds other splits: the line names them
        (tmp_path / "mevis" / split).mkdir(parents=True)
        (tmp_path / "mevis" / split / "meta_expressions.json").write_text('{"videos": {}}')
    [line] = _fails(capsys, "infer", "--model", "tiny", "--dataset", f"mevis:{tmp_path / 'mevis'}", "--split", "valid_u",
                    "--out", str(tmp_path / "o"), "--num-actors", "0")
    assert line == (f"salma infer: {tmp_path / 'mevis' / 'valid_u' / 'meta_expressions.json'}: file not found; "
                    f"mevis splits in {tmp_path / 'mevis'}: train, valid")


def test_evaluate_a_folder_without_predictions(capsys, tmp_path):
    [line] = _fails(capsys, "evaluate", "--pred", str(tmp_path), "--no-tracking")
    assert f"{tmp_path} has no run_info.json; pass --dataset FORMAT:ROOT and --split" in line


def test_export_a_folder_without_checkpoints(capsys, tmp_path):
    [line] = _fails(capsys, "export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"), "--no-tracking")
    assert "is neither a checkpoint nor a run folder with one" in line


def test_segment_missing_input(capsys, tmp_path):
    [line] = _fails(capsys, "segment", str(tmp_path / "photo.jpg"), "the cat", "--model", "tiny")
    assert line == f"salma segment: file not found: {tmp_path / 'photo.jpg'}"


def _unknown_config_key(folder):
    document = json.loads((folder / "config.json").read_text())
    document["salma"]["loss"]["weight_of_a_newer_version"] = 1.0  # as an export by another version could carry
    (folder / "config.json").write_text(json.dumps(document))


def _remote_code_tokenizer(folder):
    path = folder / "mllm" / "tokenizer_config.json"
    document = json.loads(path.read_text())
    document["auto_map"] = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    "damage, expected",
    [
        (_unknown_config_key, ("config.json: invalid model config (loss.weight_of_a_newer_version: Extra inputs are not permitted); "
                               "if another version of SALMA wrote this export, export its checkpoint again")),
        (lambda folder: (folder / "config.json").write_text("{"), "config.json: not a readable JSON file"),
        (lambda folder: (folder / "salma.safetensors").write_bytes((folder / "salma.safetensors").read_bytes()[:1000]),
         "salma.safetensors: not a readable safetensors file"),
        (lambda folder: (folder / "salma.safetensors").unlink(), "salma.safetensors: the weights file is missing"),
        (_remote_code_tokenizer, "tokenizer_config.json: the tokenizer asks for remote code"),
    ],
    ids=["unknown-config-key", "config-not-json", "truncated-weights", "missing-weights", "remote-code-tokenizer"],
)
def test_a_damaged_model_folder_is_named_in_one_line(capsys, tmp_path, tiny_export, photo, damage, expected):
    folder = tmp_path / "model"
    shutil.copytree(tiny_export, folder)
    damage(folder)
    [line] = _fails(capsys, "segment", str(photo), "the woman", "--model", str(folder), "--out", str(tmp_path / "o.png"))
    assert line.startswith(f"salma segment: {folder}") and expected in line, line
    assert not (tmp_path / "o.png").exists()


def test_infer_checks_the_model_folder_before_starting_ray(capsys, tmp_path, tiny_export):
    folder = tmp_path / "model"
    shutil.copytree(tiny_export, folder)
    _unknown_config_key(folder)
    [line] = _fails(capsys, "infer", "--model", str(folder), "--dataset", f"own_data:{tmp_path}", "--split", "val",
                    "--out", str(tmp_path / "o"))
    assert line.startswith(f"salma infer: {folder / 'config.json'}: invalid model config (loss.weight_of_a_newer_version")
    assert not (tmp_path / "o").exists()


def test_segment_an_unreadable_image_or_video(capsys, tmp_path, photo):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo.read_bytes()[:3000])
    [line] = _fails(capsys, "segment", str(truncated), "the woman", "--model", "tiny")
    assert line.startswith(f"salma segment: {truncated}: truncated or unreadable image (")
    video = tmp_path / "noise.mp4"
    video.write_bytes(bytes(range(256)) * 20)
    [line] = _fails(capsys, "segment", str(video), "the woman", "--model", "tiny")
    assert line == f"salma segment: {video}: unreadable video"


def test_segment_a_folder_of_pictures_of_several_sizes(capsys, tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (64, 48)).save(folder / "a.png")
    Image.new("RGB", (64, 48)).save(folder / "b.png")
    Image.new("RGB", (40, 30)).save(folder / "c.png")
    [line] = _fails(capsys, "segment", str(folder), "the cat", "--model", "tiny", "--out", str(tmp_path / "o.mp4"))
    assert line.startswith(f"salma segment: {folder / 'c.png'}: 40x30 pixels, but a.png is 64x48: a folder is read "
                           "as the frames of one video")
    assert line.endswith(f"salma infer --dataset own_data:{folder} (docs/inference.md)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_segment_an_image_into_an_overlay_that_is_not_a_picture(capsys, tmp_path, photo):
    out = tmp_path / "overlay.txt"
    [line] = _fails(capsys, "segment", str(photo), "the woman", "--model", "tiny", "--out", str(out))
    assert line.startswith(f"salma segment: --out {out}: an image's overlay is a picture (.jpg, .jpeg, .png")
    assert line.endswith(f"e.g. --out {tmp_path / 'overlay.png'}")
    assert list(tmp_path.iterdir()) == []


def test_unknown_command_and_bad_arguments_exit_2(capsys):
    assert main(["trian"]) == EXIT_USER_ERROR
    assert "unknown command 'trian'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["data", "synth"])  # argparse: --out is required
    assert exit_.value.code == 2
    assert "usage: salma data synth" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[c] for c in COMMANDS] + [["data", c] for c in DATA_COMMANDS])
def test_help_reads_as_plain_text(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: salma {' '.join(command)}" in text
    assert "``" not in text  # the docstrings' reST markers stay in the source


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
