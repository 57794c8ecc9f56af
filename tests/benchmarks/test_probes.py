"""The helpers behind the grounding diagnostics in benchmarks/ (the scripts themselves print
numbers and are run by hand)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

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
