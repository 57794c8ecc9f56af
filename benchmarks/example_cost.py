"""What one training example costs, by kind: the figures behind ``pipelines.data.example_cost``.

Times forward + backward of the tiny preset (tracking loss on, as in the quickstart) in one
process at one thread, on batches of one kind of random example (``salma.testing.random_batch``:
images or 3-frame videos with 0-3 objects), and fits per-sample, per-frame, per-(object, frame)
pair and per-tracked-(object, frame) costs by least squares. Text-only samples are the batches with
no objects (SAM-2 does not run on them). Prints ms per sample, the fit and its residuals.

With ``--mixture CONFIG`` it also deals that experiment's training data to its ranks as the
pipeline does, with ``data.balance_ranks`` off and on, and prints the estimated cost of the
slowest rank over the ranks' mean per step (every step waits for the slowest rank in its
gradient all-reduce): what the balancing can save if time follows the estimate.

    .venv/bin/python benchmarks/example_cost.py [--repeats 6] [--batch-size 8]
    .venv/bin/python benchmarks/example_cost.py --repeats 0 --mixture experiments/quickstart.yaml
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pipelines.config import load_experiment
from pipelines.data import WorkerBatches
from salma.builder import build_salma
from salma.tokenizer import load_tokenizer
from salma.testing import random_batch, tiny_salma_config

KINDS = [(1, 0), (1, 1), (1, 2), (1, 3), (3, 1), (3, 2), (3, 3)]  # (frames, objects)


def ms_per_sample(model, config, *, tokenizer, frames: int, objects: int, batch_size: int, repeats: int) -> float:
    batch = random_batch(config, batch_size=batch_size, num_frames=frames, num_objects=objects, seed=1,
                         tokenizer=tokenizer)
    times = []
    for _ in range(repeats + 2):  # the first two warm up
        start = time.perf_counter()
        model(batch)["total"].backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:]) / batch_size * 1000


def rank_imbalance(config_path: str, *, balance: bool, steps: int) -> tuple[float, float]:
    """Mean and worst over ``steps`` steps of (slowest rank's estimated cost / ranks' mean) - 1."""
    cfg = load_experiment(config_path, [f"data.balance_ranks={str(balance).lower()}"])
    tokenizer = load_tokenizer("tiny")
    t, world = cfg.train, cfg.train.num_workers
    ranks = [WorkerBatches(cfg, rank=r, world_size=world, tokenizer=tokenizer) for r in range(world)]
    streams = []
    for shard in ranks:
        costs, epoch = [], 0
        while len(costs) < steps * t.batch_size_per_worker:
            costs += [shard.record_costs[s][i] for s, i in shard._epoch_order(epoch)[shard.rank :: world]]
            epoch += 1
        streams.append(costs)
    excess = []
    for step in range(steps):
        window = slice(step * t.batch_size_per_worker, (step + 1) * t.batch_size_per_worker)
        per_rank = [sum(stream[window]) for stream in streams]
        excess.append(max(per_rank) / (sum(per_rank) / world) - 1)
    return float(np.mean(excess)), float(np.max(excess))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mixture", help="an experiment YAML whose rank balance to estimate")
    parser.add_argument("--steps", type=int, default=1500, help="steps of --mixture to deal")
    args = parser.parse_args(argv)
    if args.mixture:
        for balance in (False, True):
            mean, worst = rank_imbalance(args.mixture, balance=balance, steps=args.steps)
            print(f"balance_ranks={str(balance).lower():5} slowest rank over the mean, per step: "
                  f"{mean:+.1%} on average, {worst:+.1%} at worst ({args.steps} steps)")
    if args.repeats == 0:
        return 0
    torch.set_num_threads(1)
    config = tiny_salma_config()
    built = build_salma(config)
    model = built.model
    model.train()
    model.set_schedule(500, 1000)  # past the warm-ups: every loss term at full weight
    rows, measured = [], []
    for frames, objects in KINDS:
        ms = ms_per_sample(model, config, tokenizer=built.tokenizer, frames=frames, objects=objects,
                           batch_size=args.batch_size, repeats=args.repeats)
        kind = "text" if objects == 0 else ("image" if frames == 1 else f"{frames}-frame video")
        print(f"{kind:>14} {objects} objects: {ms:6.1f} ms/sample", flush=True)
        sam_frames = frames if objects else 0
        tracked = objects * (frames - 1) if frames > 1 else 0
        rows.append([1.0, sam_frames, sam_frames * objects, tracked])
        measured.append(ms)
    fit, *_ = np.linalg.lstsq(np.array(rows), np.array(measured), rcond=None)
    names = ("per sample", "per frame", "per pair", "per tracked")
    print("fit (ms): " + ", ".join(f"{n} {v:.2f}" for n, v in zip(names, fit)))
    predicted = np.array(rows) @ fit
    print("residuals (ms/sample): " + " ".join(f"{m - p:+.1f}" for m, p in zip(measured, predicted)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
