"""A format added in one module (``toy_boxes_format``) goes through everything a built-in format
does: config validation, reading, the training examples and a training forward, batch inference
and scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.config import EvalConfig, ExperimentConfig
from pipelines.config_errors import ConfigError
from pipelines.evaluate import score_predictions
from pipelines.held_out import HeldOutBatch
from pipelines.infer import infer, parse_dataset
from salma.builder import build_salma
from salma.data import read_source, source_format
from salma.data.formats import register_format
from salma.export import export_model
from salma.testing import tiny_salma_config

import toy_boxes_format  # noqa: F401  (registers toy_boxes)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    entries = []
    for i in range(3):
        pixels = rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.png")
        entries.append({"id": f"img{i}", "image": f"img{i}.png", "height": 96, "width": 128, "things": [
            {"id": f"img{i}_a", "box": [8, 8, 40, 50], "sentences": ["the left box", "the box on the left"]},
            {"id": f"img{i}_b", "box": [70, 20, 120, 90], "sentences": ["the right box"]},
        ]})
    (root / "val.json").write_text(json.dumps(entries))
    return root


def test_the_format_is_registered_where_it_is_defined():
    declared = source_format("toy_boxes")
    assert (declared.media, declared.scoring) == ("image", "image")
    with pytest.raises(ValueError, match="already registered by toy_boxes_format.read_toy_boxes"):
        register_format("toy_boxes", media="image")(lambda root, split: [])


def test_configs_accept_it_and_still_refuse_a_misspelt_format(toy_root):
    source = {"name": "toy", "format": "toy_boxes", "root": str(toy_root), "split": "val"}
    ExperimentConfig.model_validate({"data": {"sources": [source]}})
    with pytest.raises(ValueError, match="unknown source format 'toy_boxs'.*toy_boxes"):
        ExperimentConfig.model_validate({"data": {"sources": [{**source, "format": "toy_boxs"}]}})
    with pytest.raises(ConfigError, match="unknown format 'toy_boxs'"):
        parse_dataset(f"toy_boxs:{toy_root}", split="val")


def test_reading_training_examples_and_a_training_forward(toy_root):
    records = read_source("toy_boxes", toy_root, "val")
    assert [r.sample_id for r in records] == ["img0", "img1", "img2"]
    cfg = ExperimentConfig.model_validate({
        "model": {"preset": "tiny"},
        "data": {"eval_sources": [{"name": "toy", "format": "toy_boxes", "root": str(toy_root), "split": "val"}]},
    })
    built = build_salma(cfg.model_config_resolved)
    model = built.model
    held_out = HeldOutBatch.from_config(cfg, tokenizer=built.tokenizer)
    assert held_out is not None and held_out.batch.gt_masks.shape[0] >= 3  # one referent or more per image
    terms = model(held_out.batch)
    assert torch.isfinite(terms["total"]) and terms["total"] > 0
    terms["total"].backward()


def test_batch_inference_and_scoring(toy_root, tmp_path):
    model = export_model(build_salma(tiny_salma_config()), tmp_path / "model")
    source = parse_dataset(f"toy_boxes:{toy_root}", split="val")
    out = tmp_path / "pred"
    summary = infer(model, source, out, settings=EvalConfig(num_actors=0, generate=False, visual_samples=0))
    assert summary.records == 3 and summary.predicted == 3
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 9  # one entry per sentence
    scores = score_predictions(out, source)
    assert scores.counts["sentences"] == 9 and scores.counts["missing_predictions"] == 0
    assert 0.0 <= scores.groups["all"]["cIoU"] <= 100.0
