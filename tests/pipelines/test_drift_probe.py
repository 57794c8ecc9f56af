"""The drift probe over eval sources: clutter splits measured, others skipped, the same objects for
every call (paired across arms and seeds), no batch of one."""

from __future__ import annotations

import math

import pytest

from pipelines.config import SourceConfig
from pipelines.drift_probe import _chunks, probe_sources
from salma.builder import build_salma
from salma.data.synthetic import ClutterCounts, write_synthetic
from salma.testing import tiny_salma_config


def test_chunks_never_leave_a_batch_of_one():
    assert [len(c) for c in _chunks(list(range(9)), 4)] == [4, 5]
    assert [len(c) for c in _chunks(list(range(8)), 4)] == [4, 4]
    assert [len(c) for c in _chunks(list(range(1)), 4)] == [1]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe-sources")
    write_synthetic(out, seed=1, num_images=2, num_videos=2, clutter=ClutterCounts(
        train_images=0, eval_images=3, train_videos=0, eval_videos=2))
    root = out / "refer" / "refcoco"
    return [
        SourceConfig(name="lure_img", format="refcoco", root=str(root), split="lure"),
        SourceConfig(name="control_vid", format="mevis", root=str(out / "mevis"), split="control"),
        SourceConfig(name="val_img", format="refcoco", root=str(root), split="val"),
    ]


def test_probe_measures_the_clutter_splits_the_same_way_every_time(sources):
    built = build_salma(tiny_salma_config())
    metrics, rows = probe_sources(built, sources, num_frames=2, batch_size=2)
    assert set(rows) == {"lure_img", "control_vid"}  # val has no clutter annotations
    assert len(rows["lure_img"]) == 3 and len(rows["control_vid"]) == 2
    assert metrics["eval/lure_img/probe/n"] == 3.0
    assert 0 <= metrics["eval/lure_img/probe/floor_ciou"] <= 100
    assert math.isfinite(metrics["eval/control_vid/probe/seg_attention_clutter"])
    again, rows_again = probe_sources(built, sources, num_frames=2, batch_size=2)
    assert rows_again == rows and built.model.training  # deterministic; the model's mode is restored
    with pytest.raises(ValueError, match="batch_size"):
        probe_sources(built, sources, num_frames=2, batch_size=1)


def test_synthetic_data_is_rewritten_when_the_clutter_sizes_change(tmp_path, monkeypatch):
    import json

    import salma.data.synthetic as synthetic
    from pipelines.config import ExperimentConfig
    from pipelines.data import ensure_synthetic

    written = []

    def fake_write(out, *, seed, size, clutter):  # records the request, writes only the manifest
        written.append(clutter)
        manifest = {"generator": synthetic.GENERATOR, "version": synthetic.GENERATOR_VERSION, "seed": seed,
                    "size": size, "datasets": {}}
        if clutter.enabled:
            manifest["clutter"] = {k: getattr(clutter, k) for k in ("train_images", "eval_images", "train_videos", "eval_videos")}
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text(json.dumps(manifest))
        return manifest

    monkeypatch.setattr(synthetic, "write_synthetic", fake_write)

    def cfg(**clutter):
        return ExperimentConfig.model_validate(
            {"data": {"synthetic": {"enabled": True, "out": str(tmp_path / "d"), "clutter": clutter}}})

    ensure_synthetic(cfg())
    ensure_synthetic(cfg())  # the same: reused
    ensure_synthetic(cfg(eval_images=5))  # clutter asked for: rewritten
    ensure_synthetic(cfg(eval_images=5))
    assert [c.eval_images for c in written] == [0, 5]
