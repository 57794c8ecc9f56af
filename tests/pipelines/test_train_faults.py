"""Faults in local mode: the skip report survives a run stopped by the bad-record threshold. The
checkpoint fallback on resume is tested in test_checkpoint.py (the choice) and test_train_ray.py
(a relaunch whose latest checkpoint, registered by Ray, was truncated)."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines.data import TooManyBadRecords
from pipelines.train import train


def test_bad_record_report_is_written_when_the_threshold_stops_the_run(ray_cluster, synthetic_data, tiny_experiment, tmp_path):
    copy = tmp_path / "refer"
    shutil.copytree(synthetic_data / "refer", copy)
    for image in (copy / "images").rglob("*.jpg"):
        image.write_bytes(b"not a jpeg")
    cfg = tiny_experiment(
        tmp_path, f"data.sources=[{{name: refcoco, format: refcoco, root: {copy / 'refcoco'}}}]",
        "data.max_bad_fraction=0.1", "tracking.enabled=false",
    )
    with pytest.raises(TooManyBadRecords, match="truncated or unreadable image"):
        train(cfg)
    (report,) = (tmp_path / "runs").glob("tiny-*/bad_records.rank0.json")
    content = json.loads(report.read_text())
    assert content["skipped"] >= 20 and content["skipped"] == content["rows_seen"]
    assert {r["reason"] for r in content["records"]} == {"truncated or unreadable image"}
    assert sum(r["count"] for r in content["records"]) == content["skipped"]

