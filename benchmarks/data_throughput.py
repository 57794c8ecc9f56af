"""Training data pipeline throughput on the synthetic video set, with 1 and 2 CPUs.

For each CPU count, a fresh local Ray with that many CPUs runs the real pipeline
(``pipelines.data.WorkerBatches``: Ray Data decode → sample → tile → tokenize → collate) for one
rank over the synthetic MeViS train split and reports samples/s and frames/s after a warm-up.
The data-wait share of a training step in the quickstart configuration is reported by training
itself (``data_wait_fraction`` in MLflow and the training log); run
``benchmarks/train_overhead.py`` or the quickstart to see it.

    .venv/bin/python benchmarks/data_throughput.py [--samples 200] [--data data/synthetic]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipelines.config import load_experiment
from pipelines.data import WorkerBatches
from salma.data.synthetic import write_synthetic
from salma.tokenizer import build_tiny_tokenizer


def measure(cfg, *, cpus: int, samples: int, warmup: int) -> tuple[float, float]:
    import ray

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
    try:
        it = WorkerBatches(cfg, rank=0, world_size=1, tokenizer=build_tiny_tokenizer())
        batch_size = cfg.train.batch_size_per_worker
        for _ in range(max(1, warmup // batch_size)):
            next(it)
        start = time.perf_counter()
        seen = frames = 0
        while seen < samples:
            batch = next(it)
            seen += batch.batch_size
            frames += batch.sam_pixel_values.shape[0]
        elapsed = time.perf_counter() - start
        it.close()
        return seen / elapsed, frames / elapsed
    finally:
        ray.shutdown()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--data", default="data/synthetic")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.data).resolve()
    if not (root / "manifest.json").is_file():
        write_synthetic(root, seed=0, size="small")
    cfg = load_experiment(
        None,
        [
            "model.preset=tiny",
            f'data.sources=[{{"name": "mevis", "format": "mevis", "root": "{root}/mevis", "split": "train", "repeats": 20}}]',
            "data.num_frames=3",
            "data.max_objects=3",
            "train.batch_size_per_worker=4",
        ],
    )
    rows = {}
    for cpus in (1, 2):
        rows[cpus] = measure(cfg, cpus=cpus, samples=args.samples, warmup=args.warmup)
        print(f"{cpus} CPU(s): {rows[cpus][0]:7.1f} samples/s  {rows[cpus][1]:7.1f} frames/s", flush=True)
    print(f"speed-up 2 vs 1 CPU: {rows[2][0] / rows[1][0]:.2f}x")


if __name__ == "__main__":
    main()
