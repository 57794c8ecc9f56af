"""benchmarks/gpu_train_step.py runs end to end at tiny size on CPU (the salma-1b numbers need a
GPU); and benchmarks/convert_internvl.py measures a conversion (tiny replica)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_gpu_train_step_benchmark_runs_at_tiny_size_on_cpu(tmp_path):
    bench = _load("gpu_train_step")
    report = bench.main(["--size", "tiny", "--device", "cpu", "--precision", "fp32", "--batch-size", "1",
                         "--frames", "2", "--objects", "2", "--warmup", "1", "--steps", "1",
                         "--json", str(tmp_path / "out.json")])  # fmt: skip
    assert json.loads((tmp_path / "out.json").read_text()) == json.loads(json.dumps(report))
    off, on = report["results"]
    assert (off["gradient_checkpointing"], on["gradient_checkpointing"]) == (False, True)
    for r in (off, on):
        assert r["samples_per_s"] > 0 and r["peak_memory_gib"] > 0 and r["trained_parameters"] > 0
        assert r["flops_per_sample"] == off["flops_per_sample"] > 1e6  # counted once, checkpointing off
        assert r["mfu"] is None  # no accelerator peak on CPU
    assert report["zero_stage"] == 2


@pytest.mark.slow
def test_the_conversion_benchmark_reports_peak_memory_against_the_shards(tmp_path):
    bench = _load("convert_internvl")
    report = bench.main(["--work", str(tmp_path), "--sizes", "tiny", "--shard-mb", "3"])
    assert report["source_shards"] > 1 and report["written_mib"] == pytest.approx(report["checkpoint_mib"], rel=0.01)
    assert report["peak_rss_mib"] >= report["baseline_rss_mib"] > 0 and report["convert_seconds"] > 0
    assert not (tmp_path / "InternVL2_5-1B-hf").exists()  # removed without --keep
