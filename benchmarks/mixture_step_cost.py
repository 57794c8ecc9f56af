"""What a training step of an experiment's own data costs, for several variants of its config.

A full quickstart's training time moves by 10-20 % with the machine's load from one hour to the
next, which hides most changes worth making. This times the compute alone: the first
``--batches`` micro-batches of both ranks of a 2-worker run of the experiment's mixture (drawn,
dealt and encoded as the Ray Data pipeline would, here in-process), forward + backward + a plain
AdamW step of the experiment's model in one process at ``--threads`` torch threads, the variants
interleaved batch by batch (the order alternates) so that a slow minute falls on all of them. A
variant is a list of overrides, comma-separated (``--variant data.num_frames=2``); the first
variant is the experiment as it stands.

Prints per variant the mean ms per micro-batch and, since a data-parallel step waits for its
slower rank, the mean over steps of the slower rank's micro-batch: the compute a step of the
2-worker run costs, without the all-reduce, the optimizer's sharding or the data pipeline, and
its ratio to the first variant.

    .venv/bin/python benchmarks/mixture_step_cost.py --variant data.num_frames=2
    .venv/bin/python benchmarks/mixture_step_cost.py --config experiments/quickstart.yaml \\
        --batches 60 --variant data.num_frames=2 --variant model.loss.track_weight=0

Figures: docs/experiments/2026-12-07-quickstart-time-budget.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pipelines.config import ExperimentConfig, load_experiment
from pipelines.data import EncodeRows, WorkerBatches
from pipelines.quickstart import DEFAULT_CONFIG
from salma.batch import SalmaBatch
from salma.builder import build_salma
from salma.data.examples import collate, example_from_bytes
from salma.tokenizer import load_tokenizer, tokenizer_name

WARMUP_BATCHES = 2
WORLD = 2


def mixture_batches(cfg: ExperimentConfig, *, rank: int, batches: int) -> list[SalmaBatch]:
    """This rank's first ``batches`` micro-batches of ``cfg``'s mixture in a 2-worker run."""
    tokenizer = load_tokenizer(tokenizer_name(cfg.model_config_resolved))
    shard = WorkerBatches(cfg, rank=rank, world_size=WORLD, tokenizer=tokenizer)
    size = cfg.train.batch_size_per_worker
    rows = []
    epoch = 0
    while len(rows) < batches * size:
        rows += shard._epoch_rows(epoch, 0)
        epoch += 1
    rows = rows[: batches * size]
    encode = EncodeRows(model_config_json=shard.model_config_json, options=shard.options, seed=cfg.data.seed)
    out = encode({"record": np.array([r["record"] for r in rows], dtype=object),
                  "key": np.array([r["key"] for r in rows], dtype=object)})
    examples = [example_from_bytes(b) for b in out["example"] if b]
    if len(examples) < len(rows):
        raise SystemExit(f"{len(rows) - len(examples)} rows of the mixture failed to decode; check the data")
    pad = tokenizer.pad_token_id
    return [collate(examples[i * size : (i + 1) * size], pad_token_id=pad) for i in range(batches)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--variant", action="append", default=[], help="comma-separated overrides (repeatable)")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.batches <= WARMUP_BATCHES + 1:
        parser.error(f"--batches must be above {WARMUP_BATCHES + 1}")
    torch.set_num_threads(args.threads)
    variants = [[]] + [[o for o in v.split(",") if o] for v in args.variant]
    names = ["as configured"] + args.variant
    data, models = [], []
    for overrides in variants:
        cfg = load_experiment(args.config, overrides)
        ranks = [mixture_batches(cfg, rank=r, batches=args.batches) for r in range(WORLD)]
        torch.manual_seed(0)
        model = build_salma(cfg.model_config_resolved).model
        model.train()
        model.set_schedule(cfg.train.max_steps, cfg.train.max_steps)  # past the warm-ups: every loss term on
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
        data.append(ranks)
        models.append((model, optimizer))
    times = np.zeros((len(variants), WORLD, args.batches))
    for i in range(args.batches):
        order = list(range(len(variants))) if i % 2 == 0 else list(reversed(range(len(variants))))
        for v in order:
            model, optimizer = models[v]
            for r in range(WORLD):
                start = time.perf_counter()
                model(data[v][r][i])["total"].backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                times[v, r, i] = time.perf_counter() - start
    baseline = None
    for name, measured in zip(names, times):
        t = measured[:, WARMUP_BATCHES:] * 1000  # (rank, step) ms
        step = float(t.max(axis=0).mean())
        baseline = baseline or step
        print(f"{name:>40}: {t.mean():6.1f} ms per micro-batch (median {statistics.median(t.ravel()):6.1f}); "
              f"slower rank {step:6.1f} ms per step, {step / t.mean() - 1:+.1%} over the mean "
              f"({step / baseline:.3f} of the first)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
