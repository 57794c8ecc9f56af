"""The Ray Data training pipeline: shards, determinism, resume position, bad input, 2 workers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pipelines.config import load_experiment
from pipelines.data import TooManyBadRecords, WorkerBatches, mixture_order, read_mixture, worker_batches
from salma.data.errors import DatasetFormatError
from salma.data.synthetic import write_synthetic
from salma.tokenizer import build_tiny_tokenizer

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipeline-data")
    write_synthetic(out, seed=3, num_images=12, num_videos=4)
    return out


def experiment(data_dir: Path, *overrides: str, images: Path | None = None):
    refcoco = images or data_dir / "refer" / "refcoco"
    return load_experiment(
        None,
        [
            "model.preset=tiny",
            "data.num_frames=2",
            "data.max_objects=2",
            "data.cpus_per_task=0.25",
            f"data.sources=[{{name: refcoco, format: refcoco, root: {refcoco}, repeats: 2}},"
            f" {{name: mevis, format: mevis, root: {data_dir / 'mevis'}}}]",
            "train.batch_size_per_worker=2",
            *overrides,
        ],
    )


def take(it, n):
    return [next(it) for _ in range(n)]


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.as_dict().values(), b.as_dict().values()))


def test_mixture_applies_repeats_and_is_a_permutation_per_epoch():
    order0 = mixture_order([3, 2], [2, 1], seed=0, epoch=0)
    order1 = mixture_order([3, 2], [2, 1], seed=0, epoch=1)
    expected = sorted([(0, i) for i in range(3)] * 2 + [(1, i) for i in range(2)])
    assert sorted(order0) == expected and sorted(order1) == expected
    assert order0 != order1
    assert order0 == mixture_order([3, 2], [2, 1], seed=0, epoch=0)


def test_ranks_split_one_epoch_without_overlap(ray_cluster, data_dir):
    cfg = experiment(data_dir)
    tok = build_tiny_tokenizer()
    shards = [WorkerBatches(cfg, rank=r, world_size=2, tokenizer=tok) for r in range(2)]
    total = sum(n * r for n, r in zip(shards[0].sizes, shards[0].repeats))
    assert shards[0].rows_per_epoch + shards[1].rows_per_epoch == total
    for it in shards:
        it.close()


def test_the_stream_is_deterministic_and_resumes_exactly(ray_cluster, data_dir):
    cfg = experiment(data_dir)
    tok = build_tiny_tokenizer()
    full = worker_batches(cfg, rank=0, world_size=2, start_step=0, tokenizer=tok)
    first = take(full, 3)
    position = full.position
    rest = take(full, 3)
    again = worker_batches(cfg, rank=0, world_size=2, start_step=0, tokenizer=tok)
    assert all(same(a, b) for a, b in zip(first, take(again, 3)))
    resumed = worker_batches(cfg, rank=0, world_size=2, start_step=3, tokenizer=tok, start_position=position)
    assert all(same(a, b) for a, b in zip(rest, take(resumed, 3)))
    replayed = worker_batches(cfg, rank=0, world_size=2, start_step=3, tokenizer=tok)
    assert all(same(a, b) for a, b in zip(rest, take(replayed, 3)))
    for it in (full, again, resumed, replayed):
        it.close()


def test_bad_records_are_skipped_counted_and_batches_stay_full(ray_cluster, data_dir, tmp_path):
    copy = tmp_path / "refer"
    shutil.copytree(data_dir / "refer", copy)
    images = sorted((copy / "images").rglob("*.jpg"))
    images[0].unlink()  # a missing image
    images[1].write_bytes(images[1].read_bytes()[:200])  # a truncated JPEG
    cfg = experiment(data_dir, "data.max_bad_fraction=0.5", images=copy / "refcoco")
    it = WorkerBatches(cfg, rank=0, world_size=1, tokenizer=build_tiny_tokenizer())
    batches = take(it, it.rows_per_epoch // 2 - 2)
    assert all(b.batch_size == 2 for b in batches)
    reasons = {r for (_, r) in it.bad.counts}
    assert it.bad.skipped >= 2 and {"missing image file", "truncated or unreadable image"} <= reasons
    files = {Path(p).name for (p, _) in it.bad.counts}
    assert {images[0].name, images[1].name} <= files
    report = tmp_path / "bad.json"
    it.bad.write(report)
    assert json.loads(report.read_text())["skipped"] == it.bad.skipped
    it.close()


def test_the_job_stops_when_too_many_records_are_bad(ray_cluster, data_dir, tmp_path):
    copy = tmp_path / "refer"
    shutil.copytree(data_dir / "refer", copy)
    for image in (copy / "images").rglob("*.jpg"):
        image.write_bytes(b"not a jpeg")
    cfg = experiment(data_dir, "data.max_bad_fraction=0.1", images=copy / "refcoco")
    it = WorkerBatches(cfg, rank=0, world_size=1, tokenizer=build_tiny_tokenizer())
    with pytest.raises(TooManyBadRecords, match="Worst offenders: .*jpg: truncated or unreadable image"):
        take(it, 40)


def test_a_broken_dataset_json_fails_at_start_with_its_path(data_dir, tmp_path):
    copy = tmp_path / "mevis"
    shutil.copytree(data_dir / "mevis", copy)
    meta = copy / "train" / "meta_expressions.json"
    meta.write_text(meta.read_text()[:-20])
    cfg = load_experiment(
        None, ["model.preset=tiny", f"data.sources=[{{name: mevis, format: mevis, root: {copy}}}]"]
    )
    with pytest.raises(DatasetFormatError, match="meta_expressions.json"):
        read_mixture(cfg.data.sources)


@pytest.mark.slow
def test_the_pipeline_feeds_a_two_worker_ray_train_loop(ray_cluster, data_dir):
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = experiment(data_dir)

    def loop(config):
        ctx = ray.train.get_context()
        it = worker_batches(cfg, rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), start_step=0,
                            tokenizer=build_tiny_tokenizer())
        ids = [int(next(it).input_ids.sum()) for _ in range(3)]
        it.close()
        ray.train.report({"rank": ctx.get_world_rank(), "position": it.position, "ids": ids})

    result = TorchTrainer(
        loop,
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path=str(data_dir / "ray_results"), name="pipeline_feed"),
    ).fit()
    assert result.error is None
