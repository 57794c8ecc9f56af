"""Drift measures: area-normalised ratios, the decoder's attention recomputed exactly, the probe on
a clutter batch for the baseline and an MBA model, and the split aggregates on hand-made rows."""

from __future__ import annotations

import math
import random

import pytest
import torch

from salma.builder import build_salma
from salma.data.examples import ImageGeometry, collate
from salma.data.refcoco import read_refcoco
from salma.data.sampling import SamplingOptions, sample_example
from salma.data.synthetic import ClutterCounts, write_synthetic
from salma.drift_measures import aggregate, probe_batch, region_ratio, token_to_image_attention
from salma.testing import tiny_salma_config


def test_region_ratio_on_hand_values():
    coverage = torch.zeros(4, 4)
    coverage[:2, :2] = 1.0  # a quarter of the cells
    assert region_ratio(torch.ones(4, 4), coverage) == pytest.approx(1.0)
    assert region_ratio(coverage.clone(), coverage) == pytest.approx(4.0)  # all the mass on the region
    assert region_ratio(1.0 - coverage, coverage) == 0.0
    assert math.isnan(region_ratio(torch.ones(4, 4), torch.zeros(4, 4)))
    assert math.isnan(region_ratio(torch.zeros(4, 4), coverage))


def test_captured_attention_reproduces_the_layer_output():
    from sam2.modeling.sam.transformer import Attention

    torch.manual_seed(0)
    layer = Attention(16, 2, downsample_rate=2).eval()
    q, k, v = torch.randn(3, 5, 16), torch.randn(3, 7, 16), torch.randn(3, 7, 16)
    with token_to_image_attention(layer) as captured:
        out = layer(q=q, k=k, v=v)
    (probs,) = captured
    assert probs.shape == (3, 2, 5, 7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2, 5))
    values = layer._separate_heads(layer.v_proj(v), 2)
    torch.testing.assert_close(layer.out_proj(layer._recombine_heads(probs @ values)), out, atol=1e-5, rtol=1e-5)
    layer(q=q, k=k, v=v)
    assert len(captured) == 1  # the hook is gone after the block


@pytest.fixture(scope="module")
def clutter_batch(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe")
    write_synthetic(out, seed=5, num_images=2, num_videos=2, clutter=ClutterCounts(
        train_images=0, eval_images=3, train_videos=0, eval_videos=0))
    records = read_refcoco(out / "refer" / "refcoco", "lure") + read_refcoco(out / "refer" / "refcoco", "control")
    built = build_salma(tiny_salma_config())
    model, tokenizer, geometry = built.model, built.tokenizer, ImageGeometry.from_config(built.config)
    options = SamplingOptions(num_frames=1, max_objects=1)
    examples = [sample_example(r, rng=random.Random(i), options=options, tokenizer=tokenizer, geometry=geometry)
                for i, r in enumerate(records)]
    return model, collate(examples, pad_token_id=tokenizer.pad_token_id)


def test_probe_gives_every_measure_to_mba_and_all_but_the_update_to_the_baseline(clutter_batch):
    model, batch = clutter_batch
    with torch.no_grad():
        model.mba.gamma.fill_(0.5)  # MBA acts
    model.eval()
    rows = probe_batch(model, batch)
    assert [r["lure"] for r in rows] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    for p, row in enumerate(rows):  # one frame per object: pair p is object p
        gt, objects = batch.gt_masks[p], batch.frame_object_masks[p]
        assert row["floor_intersection"] == float((gt & objects).sum())
        assert row["floor_union"] == float((gt | objects).sum())
        assert row["clutter_area"] == float(batch.frame_clutter_masks[p].sum()) > 0
        assert 0 <= row["pred_on_clutter"] <= min(row["pred_area"], row["clutter_area"])
        assert 0 <= row["intersection"] <= row["union"]
        assert math.isfinite(row["seg_attention_clutter"]) and row["seg_attention_clutter"] >= 0
        assert math.isfinite(row["language_update_clutter"]) and row["language_update_clutter"] >= 0
    model.mba, saved = None, model.mba  # the Sa2VA baseline: same weights otherwise
    try:
        baseline = probe_batch(model, batch)
    finally:
        model.mba = saved
    assert all(math.isnan(r["language_update_clutter"]) for r in baseline)
    assert all(math.isfinite(r["seg_attention_clutter"]) for r in baseline)
    with pytest.raises(ValueError, match="clutter.json"):
        batch.frame_clutter_masks, kept = None, batch.frame_clutter_masks
        try:
            probe_batch(model, batch)
        finally:
            batch.frame_clutter_masks = kept


def test_aggregate_on_hand_made_rows():
    rows = [
        {"intersection": 30.0, "union": 50.0, "floor_intersection": 30.0, "floor_union": 100.0, "pred_area": 40.0,
         "pred_on_clutter": 10.0, "clutter_area": 20.0, "seg_attention_clutter": 2.0, "language_update_clutter": math.nan},
        {"intersection": 10.0, "union": 50.0, "floor_intersection": 20.0, "floor_union": 100.0, "pred_area": 60.0,
         "pred_on_clutter": 0.0, "clutter_area": 30.0, "seg_attention_clutter": 1.0, "language_update_clutter": math.nan},
    ]
    got = aggregate(rows)
    assert got["ciou"] == pytest.approx(40.0) and got["floor_ciou"] == pytest.approx(25.0)
    assert got["lure_share"] == pytest.approx(0.1) and got["clutter_fp"] == pytest.approx(0.2)
    assert got["seg_attention_clutter"] == pytest.approx(1.5) and math.isnan(got["language_update_clutter"])
    assert got["n"] == 2.0
