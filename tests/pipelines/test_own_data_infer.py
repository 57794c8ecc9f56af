"""``salma infer`` / ``salma evaluate`` on one's own data (format ``own_data``): masks as PNG and
RLE per expression, overlays, resumption under Ray Data, evaluation with and without masks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.config import EvalConfig
from pipelines.evaluate import EvaluationError, evaluate
from pipelines.infer import infer, parse_dataset
from pipelines.prediction_folder import RUN_INFO
from salma.data.errors import DatasetFormatError
from salma.data.masks import decode_rle
from salma.testing import write_own_data_example

FAST = EvalConfig(num_actors=0, generate=False, num_key_frames=2, visual_samples=0)


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_own_data_example(root, num_images=2, num_videos=2, with_masks=False)
    return root


def test_masks_overlays_and_results_for_every_expression(tiny_export, unlabelled, tmp_path):
    source = parse_dataset(f"own_data:{unlabelled}", split="train")
    summary = infer(tiny_export, source, tmp_path, settings=FAST, overlays=True)
    results = json.loads((tmp_path / "results.json").read_text())
    lines = [json.loads(x) for x in (unlabelled / "train.jsonl").read_text().splitlines()]
    assert summary.bad == 0 and len(results) == len(lines)
    for entry in results:
        assert entry["expression"] and "[SEG]" in entry["answer"]  # teacher-forced
        masks = [np.asarray(Image.open(tmp_path / p)) for p in entry["masks"]]
        assert all(set(np.unique(m)) <= {0, 255} for m in masks)
        rles = [entry["segmentation"]] if "image" in entry else entry["prediction_masks"]
        assert len(rles) == len(masks) and all(np.array_equal(m == 255, decode_rle(r)) for m, r in zip(masks, rles))
        overlays = [tmp_path / "overlays" / Path(p).relative_to("masks") for p in entry["masks"]]
        overlays = [o if "image" in entry else o.with_suffix(".jpg") for o in overlays]
        assert all(np.asarray(Image.open(o)).shape == m.shape + (3,) for o, m in zip(overlays, masks))
    video = next(e for e in results if "video" in e)
    assert video["masks"][0] == f"masks/{video['video']}/{video['id']}/00000.png"
    with pytest.raises(EvaluationError, match="has no masks: there is no ground truth to score"):
        evaluate(tmp_path)


def test_evaluation_scores_images_and_videos_of_a_labelled_folder(tiny_export, tmp_path):
    root = tmp_path / "data"
    write_own_data_example(root, num_images=3, num_videos=2)
    source = parse_dataset(f"own_data:{root}", split="val")
    infer(tiny_export, source, tmp_path / "pred", settings=FAST)
    report = evaluate(tmp_path / "pred")
    [scores] = report.scores
    assert set(scores.groups) == {"images", "videos"}
    assert set(scores.groups["images"]) == {"cIoU", "gIoU"} and set(scores.groups["videos"]) == {"J", "F", "J&F"}
    assert "eval/own_data_val/images/ciou" in report.metrics and scores.counts["unannotated"] == 0
    rows = scores.per_expression
    assert len(rows) == sum(1 for _ in (root / "val.jsonl").read_text().splitlines())


def test_a_failed_start_leaves_no_run_info_and_the_corrected_command_runs(tiny_export, unlabelled, tmp_path):
    wrong = parse_dataset(f"own_data:{unlabelled / 'nope'}", split="train")
    with pytest.raises(DatasetFormatError, match="file not found"):
        infer(tiny_export, wrong, tmp_path, settings=FAST)
    assert not (tmp_path / RUN_INFO).exists()
    right = parse_dataset(f"own_data:{unlabelled}", split="train")
    assert infer(tiny_export, right, tmp_path, settings=FAST).predicted > 0
    assert json.loads((tmp_path / RUN_INFO).read_text())["root"] == str(unlabelled.resolve())


@pytest.mark.ray
@pytest.mark.slow
def test_own_data_runs_under_ray_data_and_resumes(ray_cluster, tiny_export, unlabelled, tmp_path):
    source = parse_dataset(f"own_data:{unlabelled}", split="train")
    settings = FAST.model_copy(update={"num_actors": 1, "cpus_per_actor": 0.5})
    first = infer(tiny_export, source, tmp_path, settings=settings)
    before = (tmp_path / "results.json").read_text()
    shards = sorted((tmp_path / "shards").glob("*.json"))
    shards[0].unlink()
    again = infer(tiny_export, source, tmp_path, settings=settings)
    assert (first.predicted, again.predicted, again.resumed) == (first.records, 1, first.records - 1)
    assert (tmp_path / "results.json").read_text() == before


def test_the_console_shows_no_ray_data_banners_unless_verbose(tiny_export, tmp_path):
    """Run as a user would, with the output going to a file (no terminal): Ray Data then logs its
    progress as INFO lines, which the quiet console drops and --verbose lets through."""
    import subprocess
    import sys

    root = tmp_path / "photos"
    write_own_data_example(root, num_images=3, num_videos=0, with_masks=False)
    banners = ("Starting execution of Dataset", "Execution plan of Dataset", "Running Dataset")
    outputs = {}
    for flags in ([], ["--verbose"]):
        out = tmp_path / f"out{len(flags)}"
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", *flags, "infer", "--model", str(tiny_export), "--dataset",
             f"own_data:{root}", "--split", "train", "--out", str(out), "--num-actors", "1", "--teacher-force"],
            capture_output=True, text=True, timeout=300, check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[bool(flags)] = done.stdout + done.stderr
    assert not [b for b in banners if b in outputs[False]], outputs[False]
    assert re.search(r"infer own_data_train: record (\d+)/\1 \(100%\)", outputs[False]), outputs[False]
    assert all(b in outputs[True] for b in banners)
