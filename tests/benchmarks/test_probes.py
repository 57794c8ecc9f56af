"""The helpers behind the grounding diagnostics in benchmarks/ (the scripts themselves print
numbers and are run by hand), and the GPU-readiness and conversion benchmarks run end to end at
tiny size on CPU (their salma-1b numbers need a GPU or a 1B-size checkpoint)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from salma.data.record import Referent, SampleRecord

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_two_squares_are_identical_apart_from_position():
    bench = _load("decoder_localisation")
    images, masks, centres = bench.two_squares(16, 128, seed=3)
    assert images.shape == (16, 3, 128, 128) and masks.shape == (16, 2, 128, 128)
    assert not (masks[:, 0] & masks[:, 1]).any()
    sides = set()
    for n in range(16):
        a, b = images[n][:, masks[n, 0]], images[n][:, masks[n, 1]]
        assert a.shape == b.shape and torch.equal(a, b)  # same colour, same area
        for k in range(2):
            x, y = centres[n, k].long().tolist()
            assert masks[n, k, y, x]  # the centre lies in its own square
        sides.add(bool(centres[n, 0, 0] < centres[n, 1, 0]))
    assert sides == {True, False}  # square 0 is sometimes on the left, sometimes on the right


def test_restrict_to_kind_keeps_only_that_kind():
    probe = _load("grounding_probe")
    record = SampleRecord(
        source="s", split="val", sample_id="1", media="image", height=8, width=8,
        referents=[
            Referent(ref_id="a", object_ids=[1], expressions=["the red square", "the left one"], masks=[None]),
            Referent(ref_id="b", object_ids=[2], expressions=["the big circle"], masks=[None]),
        ],
    )
    only_colour = dataclasses.replace(record, sample_id="2", referents=record.referents[:1])
    out = probe.restrict_to_kind([record, only_colour], "position")
    assert [r.sample_id for r in out] == ["1", "2"]
    assert [[e for ref in r.referents for e in ref.expressions] for r in out] == [["the left one"], ["the left one"]]
    assert probe.restrict_to_kind([record], "size")[0].referents[0].ref_id == "b"
    assert probe.restrict_to_kind([only_colour], "size") == []
    assert probe.expression_kind("the square at the bottom") == "position"


def test_oracle_tracking_replays_ground_truth_key_frames(synthetic_data):
    """Every frame a key frame: SAM-2 outputs the seeded masks as they are (J&F near 1, nothing
    tracked); with 2 key frames the other frames are tracked and scored on their own."""
    from salma.data.sources import read_source

    bench = _load("oracle_tracking")
    sam = bench.load_sam("random")
    records = read_source("mevis", synthetic_data / "mevis", "valid_u")[:2]
    every = bench.oracle_scores(sam, records, num_key_frames=99)
    assert every["expressions"] == sum(len(r.referents) for r in records)
    assert every["jf_all"] > 0.9 and every["jf_tracked"] != every["jf_tracked"]  # NaN: no tracked frame
    two = bench.oracle_scores(sam, records, num_key_frames=2)
    assert 0.0 <= two["jf_tracked"] < two["jf_all"] and 0.0 <= two["present"] <= 1.0


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


def test_the_mixture_step_cost_benchmark_draws_each_ranks_batches_as_configured(tiny_experiment, tmp_path):
    bench = _load("mixture_step_cost")
    cfg = tiny_experiment(tmp_path, "train.batch_size_per_worker=4", "data.num_frames=2")
    ranks = [bench.mixture_batches(cfg, rank=r, batches=3) for r in range(bench.WORLD)]
    for batches in ranks:
        assert len(batches) == 3 and all(b.batch_size == 4 for b in batches)
        for b in batches:  # no sample holds more frames than data.num_frames
            assert torch.bincount(b.frame_sample_index).max() <= 2
    # The two ranks hold different positions of the mixture.
    def same(a, b):
        return a.shape == b.shape and torch.equal(a, b)

    assert not all(same(a.sam_pixel_values, b.sam_pixel_values) for a, b in zip(*ranks))
    three = bench.mixture_batches(tiny_experiment(tmp_path, "train.batch_size_per_worker=4", "data.num_frames=3"),
                                  rank=0, batches=3)
    assert max(torch.bincount(b.frame_sample_index).max() for b in three) == 3  # the synthetic videos have more


def test_the_engine_step_cost_benchmark_times_real_data_parallel_steps(synthetic_data, tmp_path):
    """Two spawned gloo ranks step each engine on their own batches: the data-parallel engines
    (DeepSpeed ZeRO-2 and 0, torch DDP) keep both ranks' parameters equal, the engine-free floor
    does not, so the figures time real gradient averaging."""
    refcoco, mevis = synthetic_data / "refer" / "refcoco", synthetic_data / "mevis"
    sources = f"data.sources=[{{name: refcoco, format: refcoco, root: {refcoco}}}, {{name: mevis, format: mevis, root: {mevis}}}]"
    out = tmp_path / "engines.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "engine_step_cost.py"), "--steps", "4", "--json", str(out),
         "--engines", "deepspeed:2", "deepspeed:0", "ddp", "plain", "--",
         "train.batch_size_per_worker=2", "data.synthetic.enabled=false", "data.max_objects=2", sources],
        check=True, cwd=tmp_path, timeout=600,
    )
    report = {row["engine"]: row for row in json.loads(out.read_text())}
    assert list(report) == ["deepspeed:2", "deepspeed:0", "ddp", "plain"]
    for name, row in report.items():
        assert row["slower_rank_ms"] >= row["mean_ms"] > 0
        rank0, rank1 = row["parameter_fingerprints"]
        if name == "plain":
            assert rank0 != rank1  # each rank stepped on its own batches alone
        else:
            assert rank0 == pytest.approx(rank1, rel=1e-9), name
