"""The routes from released weights, end to end through the CLI functions: ``salma convert
internvl`` then ``salma train --config experiments/salma_1b.yaml`` (sizes shrunk by overrides),
and ``salma convert sa2va`` then ``salma infer`` and ``salma evaluate``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipelines import convert as convert_module
from pipelines import evaluate as evaluate_module
from pipelines import infer as infer_module
from pipelines import train as train_module
from pipelines.checkpoint import find_latest_checkpoint
from salma.config import tiny_config
from salma.release_replicas import tiny_sizes, write_internvl_release

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _shrunk(tmp_path, synthetic_data) -> list[str]:
    """Overrides that shrink the 1B recipe to the tiny replicas and the synthetic data."""
    return [
        f"workdir={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "model.mllm.tile_size=56",
        "model.mllm.max_tiles=2",
        "model.sam.hiera=tiny",
        "model.sam.image_size=128",
        f"model.sam.overrides={json.dumps(tiny_config().sam.overrides)}",
        "model.lora.r=4",
        "model.lora.alpha=8",
        "model.loss.num_points=1024",
        "data.sources=[{name: refcoco, format: refcoco, root: %s}, {name: mevis, format: mevis, root: %s}]"
        % (synthetic_data / "refer" / "refcoco", synthetic_data / "mevis"),
        "data.eval_sources=[]",
        "data.num_frames=2",
        "data.max_objects=2",
        "data.cpus_per_task=0.25",
        "train.num_workers=0",
        "train.batch_size_per_worker=1",
        "train.grad_accum=1",
        "train.max_steps=2",
        "train.checkpoint_every=2",
        "train.log_every=1",
    ]


def test_convert_internvl_then_train_the_salma_1b_recipe(ray_cluster, synthetic_data, tmp_path):
    release = write_internvl_release(tmp_path / "InternVL2_5-1B", tiny_sizes(), max_shard_bytes=3_000_000)
    converted = tmp_path / "InternVL2_5-1B-hf"
    assert convert_module.main(["internvl", str(release), "--out", str(converted)]) == 0
    overrides = [*_shrunk(tmp_path, synthetic_data), f"model.mllm.path={converted}", "model.sam.checkpoint=null"]
    assert train_module.main(["--config", str(ROOT / "experiments" / "salma_1b.yaml"), *overrides]) == 0
    (run,) = (tmp_path / "runs").glob("salma_1b-*")
    info = find_latest_checkpoint(run)
    assert info.step == 2 and info.config["model"]["mllm"]["path"] == str(converted)
    # The recipe trained what it should: LoRA on the LLM, not the frozen base.
    trained = info.trainable_parameters
    assert any("lora_A" in n for n in trained) and not any(n.endswith("q_proj.base_layer.weight") for n in trained)


def test_convert_sa2va_then_infer_and_evaluate(ray_cluster, synthetic_data, sa2va_release, tmp_path):
    converted = tmp_path / "Sa2VA-1B-salma"
    assert convert_module.main([
        "sa2va", str(sa2va_release), "--out", str(converted), "--sam-config", "sam2_hiera_t",
        *[f"--sam-override={o}" for o in [*tiny_config().sam.overrides, "++model.image_size=128"]],
    ]) == 0  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    refcoco = synthetic_data / "refer" / "refcoco"
    assert infer_module.main([
        "--model", str(converted), "--dataset", f"refcoco:{refcoco}", "--split", "val", "--out", str(tmp_path / "pred"),
        "--num-actors", "1", "--max-samples", "3", "--max-new-tokens", "8",
    ]) == 0  # fmt: skip
    assert evaluate_module.main(["--pred", str(tmp_path / "pred"), "--tracking-uri", uri, "--new-run"]) == 0
    rows = list(csv.reader((tmp_path / "pred" / "scores.csv").read_text().splitlines()))
    assert any("cIoU" in row or "ciou" in ",".join(row) for row in rows)
    mevis = synthetic_data / "mevis"
    assert infer_module.main([
        "--model", str(converted), "--dataset", f"mevis:{mevis}", "--split", "valid_u", "--out", str(tmp_path / "video"),
        "--num-actors", "0", "--max-samples", "1", "--teacher-force", "--num-key-frames", "2",
    ]) == 0  # fmt: skip
    assert evaluate_module.main(["--pred", str(tmp_path / "video"), "--no-tracking"]) == 0
    assert "J&F" in (tmp_path / "video" / "scores.md").read_text()


def test_salma_1b_from_sa2va_trains_from_the_converted_release(ray_cluster, synthetic_data, sa2va_export, tmp_path):
    overrides = [*_shrunk(tmp_path, synthetic_data), f"model.init_from={sa2va_export}"]
    assert train_module.main(["--config", str(ROOT / "experiments" / "salma_1b_from_sa2va.yaml"), *overrides]) == 0
    (run,) = (tmp_path / "runs").glob("salma_1b_from_sa2va-*")
    info = find_latest_checkpoint(run)
    assert info.step == 2 and info.config["model"]["init_from"] == str(sa2va_export)
    assert any(n.startswith("mba.") for n in info.trainable_parameters)  # the fresh MBA trains
