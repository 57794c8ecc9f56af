"""Evaluation: scores equal the metric functions applied by hand (images, videos, ReVOS), tables,
refusals; end to end on Ray: ``salma infer`` then ``salma evaluate`` through their ``main``
functions, scores found in MLflow (SQLite), and ``evaluate_model`` with an in-memory model."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipelines import evaluate as evaluate_module
from pipelines import infer as infer_module
from pipelines.config import EvalConfig
from pipelines.evaluate import EvaluationError, evaluate, evaluate_model, score_predictions
from pipelines.infer import parse_dataset
from salma.data.masks import decode_rle, encode_mask
from salma.data.sources import read_source
from salma.metrics import aggregate_expressions, aggregate_revos, ciou_giou, video_jf, video_revos


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _gt_video(referent, record) -> np.ndarray:
    out = np.zeros((record.num_frames, record.height, record.width), dtype=bool)
    for t, rle in enumerate(referent.masks):
        if rle is not None:
            out[t] = decode_rle(rle)
    return out


def test_video_scores_are_the_metric_functions_over_expressions(synthetic_data, tmp_path):
    source = parse_dataset(f"mevis:{synthetic_data / 'mevis'}", split="valid_u")
    records = read_source("mevis", source.root, "valid_u")
    results, expected, skipped = {}, [], None
    for record in records:
        for k, referent in enumerate(record.referents):
            gt = _gt_video(referent, record)
            if skipped is None:  # the first expression has no prediction: an empty mask
                skipped = referent.ref_id
                expected.append(video_jf(np.zeros_like(gt), gt))
                continue
            pred = gt.copy() if k % 2 else np.roll(gt, 3, axis=2)
            results.setdefault(record.sample_id, {})[referent.ref_id] = {
                "prediction_masks": [encode_mask(m) for m in pred]}
            expected.append(video_jf(pred, gt))
    _write_json(tmp_path / "results.json", results)
    scores = score_predictions(tmp_path, source, workers=2)  # a process pool
    want = aggregate_expressions(expected)
    for key in ("J", "F", "J&F"):
        assert scores.groups["all"][key] == pytest.approx(100 * want[key])
    assert scores.counts == {"expressions": len(expected), "missing_predictions": 1.0, "missing_videos": 0.0}
    assert scores.metrics()["eval/mevis_valid_u/jf"] == pytest.approx(100 * want["J&F"])


def test_image_scores_are_ciou_giou_over_sentences(synthetic_data, tmp_path):
    source = parse_dataset(f"refcoco:{synthetic_data / 'refer' / 'refcoco'}", split="val")
    records = read_source("refcoco", source.root, "val")
    results, pairs = [], []
    for record in records:
        for referent in record.referents:
            gt = decode_rle(referent.masks[0])
            for i, _ in enumerate(referent.expressions):
                if not pairs:
                    pairs.append((None, gt))  # missing
                    continue
                pred = np.roll(gt, 2 * i + 1, axis=1)
                results.append({"ref_id": referent.ref_id, "sent_index": i, "segmentation": encode_mask(pred)})
                pairs.append((pred, gt))
    _write_json(tmp_path / "results.json", results)
    scores = score_predictions(tmp_path, source)
    ciou, giou = ciou_giou(pairs)
    assert scores.groups["all"] == pytest.approx({"cIoU": 100 * ciou, "gIoU": 100 * giou})
    assert scores.counts["missing_predictions"] == 1.0
    assert set(scores.metrics()) >= {"eval/refcoco_val/ciou", "eval/refcoco_val/giou"}


def _write_revos(root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One 2-frame ReVOS video: a referring, a reasoning and a no-target (type 2) expression."""
    from PIL import Image

    h, w = 10, 14
    for name in ("00000", "00001"):
        (root / "JPEGImages" / "rv1").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "JPEGImages" / "rv1" / f"{name}.jpg")
    upper = [np.zeros((h, w), bool), np.zeros((h, w), bool)]
    lower = [np.zeros((h, w), bool), np.zeros((h, w), bool)]
    upper[0][1:5, 1:5] = upper[1][2:6, 2:6] = True
    lower[0][6:9, 8:13] = lower[1][6:9, 9:14] = True
    _write_json(root / "mask_dict.json", {"5": [encode_mask(m) for m in upper], "6": [encode_mask(m) for m in lower]})
    _write_json(root / "mask_dict_foreground.json",
                {"rv1": {"masks_rle": [encode_mask(a | b) for a, b in zip(upper, lower)], "foreground_ratio": [0, 0]}})
    _write_json(root / "meta_expressions_valid_.json", {"videos": {"rv1": {
        "vid_id": 0, "height": h, "width": w, "frames": ["00000", "00001"], "expressions": {
            "0": {"exp": "the upper box", "obj_id": [0], "anno_id": [5], "type_id": 0},
            "1": {"exp": "what could hold a cup?", "obj_id": [1], "anno_id": [6], "type_id": 1},
            "2": {"exp": "the elephant", "obj_id": [], "anno_id": [], "type_id": 2},
        }}}})
    return upper, lower


def test_revos_reports_referring_reasoning_and_overall(tmp_path):
    upper, lower = _write_revos(tmp_path / "revos")
    fg = np.stack([a | b for a, b in zip(upper, lower)])
    spill = np.stack(upper) | np.stack(lower)  # the reasoning answer also covers the other object
    _write_json(tmp_path / "pred" / "results.json", {"rv1": {
        "0": {"prediction_masks": [encode_mask(m) for m in upper]},
        "1": {"prediction_masks": [encode_mask(m) for m in spill]},
        "2": {"prediction_masks": [encode_mask(np.zeros_like(m)) for m in upper]},
    }})
    source = parse_dataset(f"revos:{tmp_path / 'revos'}", split="valid")
    scores = score_predictions(tmp_path / "pred", source, workers=1)
    empty = np.zeros_like(fg)
    per = [video_revos(np.stack(upper), np.stack(upper), fg), video_revos(spill, np.stack(lower), fg),
           video_revos(empty, empty, fg)]
    want = aggregate_revos(per, [0, 1, 2])
    assert set(scores.groups) == {"referring", "reasoning", "overall"}
    for group in want:
        assert scores.groups[group] == pytest.approx(want[group])
    assert scores.groups["referring"]["J&F"] == pytest.approx(100.0)
    names = scores.metrics()
    assert {"eval/revos_valid/overall/jf", "eval/revos_valid/reasoning/r", "eval/revos_valid/referring/a"} <= set(names)


def test_split_without_ground_truth_points_to_the_server(synthetic_data, tmp_path):
    source = parse_dataset(f"ref_youtube_vos:{synthetic_data / 'ref_youtube_vos'}", split="valid",
                           options={"masks": "none"})
    _write_json(tmp_path / "results.json", {})
    with pytest.raises(EvaluationError, match="submission.zip"):
        score_predictions(tmp_path, source)
    with pytest.raises(EvaluationError, match="run salma infer first"):
        score_predictions(tmp_path / "nothing", source)


def test_tables_hold_every_score(synthetic_data, tmp_path):
    source = parse_dataset(f"mevis:{synthetic_data / 'mevis'}", split="valid_u")
    records = read_source("mevis", source.root, "valid_u")
    _write_json(tmp_path / "results.json", {r.sample_id: {ref.ref_id: {"prediction_masks": ref.masks}
                                                          for ref in r.referents} for r in records})
    _write_json(tmp_path / "diagnostics.json", [
        {"num_masks": 1, "drift": {"signal": "mba_energy", "target": 3.0, "distractor": 1.0, "total": 4.0}},
        {"num_masks": 0, "drift": {"signal": "mba_energy", "target": None, "distractor": None, "total": None}},
    ])
    report = evaluate(tmp_path, source, tracking=None)
    md = Path(report.table_md).read_text().splitlines()
    assert md[0].startswith("| benchmark | group | cIoU | gIoU | J | F | J&F")
    assert md[2].startswith("| mevis_valid_u | all |  |  | 100.00 | 100.00 | 100.00 |") and "| 0.750 |" in md[2]
    rows = list(csv.reader(open(report.table_csv)))
    assert ["mevis_valid_u", "mevis", "valid_u", "all", "J&F", "100.000000"] in rows
    assert report.metrics["eval/mevis_valid_u/update_energy/target_share"] == 0.75
    assert report.metrics["eval/mevis_valid_u/update_energy/unscored"] == 1.0
    assert report.metrics["eval/mevis_valid_u/no_seg_fraction"] == 0.5
    assert (tmp_path / "per_expression.csv").is_file()


def test_referents_whose_annotations_are_missing_are_counted_written_and_noted(synthetic_data, tmp_path):
    """Ground-truth referents the reader must skip (an anno_id missing from mask_dict.json) leave
    the denominator; the evaluation counts them, lists them in bad_records.json, and its table says
    so, instead of a score that changed without a trace."""
    import shutil

    root = tmp_path / "mevis"
    shutil.copytree(synthetic_data / "mevis" / "valid_u", root / "valid_u")
    records = read_source("mevis", root, "valid_u")
    total = sum(len(r.referents) for r in records)
    pred = tmp_path / "pred"
    _write_json(pred / "results.json", {r.sample_id: {ref.ref_id: {"prediction_masks": ref.masks}
                                                      for ref in r.referents} for r in records})
    _write_json(pred / "bad_records.json", [{"sample_id": "x", "path": "/f.jpg", "reason": "missing frame file"}])
    lost = records[0].referents[0]
    mask_dict = json.loads((root / "valid_u" / "mask_dict.json").read_text())
    for anno_id in lost.meta["anno_ids"]:
        del mask_dict[str(anno_id)]
    (root / "valid_u" / "mask_dict.json").write_text(json.dumps(mask_dict))
    skipped_ids = {f"{r.sample_id}/{ref.ref_id}" for r in records for ref in r.referents
                   if set(ref.meta["anno_ids"]) & set(lost.meta["anno_ids"])}
    report = evaluate(pred, parse_dataset(f"mevis:{root}", split="valid_u"), workers=1, tracking=None)
    assert report.metrics["eval/mevis_valid_u/skipped_by_reader"] == len(skipped_ids)
    assert report.metrics["eval/mevis_valid_u/expressions"] == total - len(skipped_ids)
    note = Path(report.table_md).read_text().splitlines()[-1]
    assert f"{len(skipped_ids)} referent(s) or record(s) of the split skipped and not scored" in note
    assert "anno_id missing from mask_dict" in note and "bad_records.json" in note
    bad = json.loads((pred / "bad_records.json").read_text())
    assert bad[0]["reason"] == "missing frame file"  # salma infer's own entry is kept
    assert {b["sample_id"] for b in bad[1:]} == skipped_ids
    assert {(b["reason"], b["stage"], b["benchmark"]) for b in bad[1:]} == {
        ("anno_id missing from mask_dict", "index", "mevis_valid_u")}


@pytest.fixture(scope="module")
def mba_model():
    import torch

    from salma.builder import build_salma
    from salma.testing import tiny_salma_config

    built = build_salma(tiny_salma_config())
    with torch.no_grad():
        built.model.mba.gamma.fill_(0.5)  # MBA acts, so the update-energy share has energy to measure
    return built


@pytest.mark.ray
def test_infer_then_evaluate_end_to_end_logs_scores_to_mlflow(ray_cluster, synthetic_data, mba_model, tmp_path):
    from mlflow import MlflowClient

    from salma.export import export_model

    exported = export_model(mba_model, tmp_path / "model")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("salma", artifact_location=(tmp_path / "mlartifacts").as_uri())
    training_run = client.create_run(experiment, run_name="train").info.run_id
    mevis = synthetic_data / "mevis"

    assert infer_module.main([
        "--model", str(exported), "--dataset", f"mevis:{mevis}", "--split", "drift", "--out", str(tmp_path / "pred"),
        "--num-actors", "2", "--teacher-force", "--num-key-frames", "3", "--visual-samples", "1", "--zip",
        "--records-per-batch", "2",
    ]) == 0
    with zipfile.ZipFile(tmp_path / "pred" / "submission.zip") as archive:  # MeViS: video folders at the top
        names = archive.namelist()
    pngs = sorted(p.relative_to(tmp_path / "pred" / "Annotations").as_posix()
                  for p in (tmp_path / "pred" / "Annotations").rglob("*.png"))
    assert sorted(names) == pngs and names[0].count("/") == 2
    # The actor pool, two records asked together, predicts exactly what the predictor does in this
    # process for each record alone.
    in_process = infer_module.infer(
        exported, parse_dataset(f"mevis:{mevis}", split="drift"), tmp_path / "local",
        settings=EvalConfig(num_actors=0, generate=False, num_key_frames=3, visual_samples=0),
    )
    assert Path(in_process.results_path).read_text() == (tmp_path / "pred" / "results.json").read_text()

    common = ["--pred", str(tmp_path / "pred"), "--tracking-uri", uri, "--run-id", training_run]
    assert evaluate_module.main(common) == 0
    logged = client.get_run(training_run).data.metrics
    for name in ("j", "f", "jf", "update_energy/target_share", "update_energy/density_share"):
        assert f"eval/mevis_drift/{name}" in logged, name
    assert 0.0 <= logged["eval/mevis_drift/update_energy/target_share"] <= 1.0
    assert {a.path for a in client.list_artifacts(training_run, "eval")} >= {"eval/scores.md", "eval/scores.csv"}
    assert len(client.list_artifacts(training_run, "eval/mevis_drift/visual_report")) == 1

    assert evaluate_module.main([*common, "--new-run"]) == 0
    linked = client.search_runs([experiment], filter_string=f"tags.`salma.model_run_id` = '{training_run}'")
    assert len(linked) == 1 and "eval/mevis_drift/jf" in linked[0].data.metrics

    # What the quickstart calls: an in-memory model, shipped to the actors once.
    metrics = evaluate_model(
        mba_model, [("refcoco_val", "refcoco", synthetic_data / "refer" / "refcoco", "val")], tmp_path / "quick",
        num_actors=1, run_id=training_run, tracking_uri=uri, step=3,
        settings=EvalConfig(generate=False, visual_samples=0),
    )
    assert {"eval/refcoco_val/ciou", "eval/refcoco_val/giou"} <= set(metrics)
    history = client.get_metric_history(training_run, "eval/refcoco_val/ciou")
    assert [(m.step, m.value) for m in history] == [(3, pytest.approx(metrics["eval/refcoco_val/ciou"]))]


def test_evaluate_model_in_process_without_tracking(synthetic_data, mba_model, tmp_path):
    metrics = evaluate_model(
        mba_model,
        [("refcoco_drift", "refcoco", synthetic_data / "refer" / "refcoco", "drift")],
        tmp_path, num_actors=0, settings=EvalConfig(generate=False, visual_samples=1),
    )
    assert metrics["eval/refcoco_drift/update_energy/scored"] > 0
    assert 0.0 <= metrics["eval/refcoco_drift/update_energy/target_share"] <= 1.0
    assert (tmp_path / "scores.md").is_file() and (tmp_path / "refcoco_drift" / "results.json").is_file()
