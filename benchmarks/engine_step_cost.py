"""What the data-parallel engine adds to a training step on CPU, beside the model's own compute.

A quickstart step on 2 CPU workers takes far longer than the forward + backward + AdamW of its
micro-batch timed alone (``benchmarks/mixture_step_cost.py``). This times, without Ray, a step of
the experiment's own micro-batches in 2 spawned processes (gloo, ``--threads`` torch threads
each) under several engines, interleaved step by step so that the machine's slow minutes fall on
all of them:

- ``deepspeed:N``: the pipeline's own engine (``pipelines.train.build_engine``: the run's DeepSpeed
  config at ZeRO stage N, its parameter groups and warm-up + cosine schedule), ``engine.backward``
  and ``engine.step`` as ``pipelines.train.train_step`` calls them;
- ``ddp``: torch's ``DistributedDataParallel`` (its C++ reducer: bucketed gloo all-reduces
  launched during the backward) with torch's AdamW on the same parameter groups and clipping;
- ``plain``: the same model, loss and AdamW with no engine and no communication (each process
  steps alone): the floor, what a step costs before any data-parallel machinery.

Prints per engine the mean over steps of the slower rank's step (the data-parallel step waits for
it) and its ratio to the first engine. The model starts from the same seed in every engine; the
engines' parameters then drift apart and are not compared with each other. Each engine's two
ranks are (``--json`` writes a fingerprint of both): a data-parallel engine keeps them equal.

    .venv/bin/python benchmarks/engine_step_cost.py --steps 40
    .venv/bin/python benchmarks/engine_step_cost.py --engines deepspeed:2 ddp -- data.num_frames=2

Figures: docs/benchmarks.md ("Where a quickstart training step goes").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mixture_step_cost import WARMUP_BATCHES, WORLD, mixture_batches

from pipelines.config import load_experiment
from pipelines.deepspeed_config import resolve_distributed_setup
from pipelines.local_ray import free_port
from pipelines.lr_schedule import parameter_groups
from pipelines.quickstart import DEFAULT_CONFIG
from pipelines.train import _vectorise_scalar_parameters, build_engine
from salma.builder import build_salma


class _Torch:
    """The model and torch's AdamW, alone or under DDP: forward, backward, clip, step."""

    def __init__(self, model: torch.nn.Module, groups: list[dict], clip: float, *, ddp: bool):
        self.params = [p for g in groups for p in g["params"]]
        self.model = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
        self.clip = clip
        self.optimizer = torch.optim.AdamW(groups, foreach=True)

    def parameters(self):
        return iter(self.params)

    def step(self, batch) -> None:
        self.model(batch)["total"].backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class _DeepSpeed:
    """The pipeline's own engine (``pipelines.train.build_engine``) at ZeRO ``stage``."""

    def __init__(self, cfg, stage: int):
        train = cfg.train.model_copy(update={"zero_stage": stage})
        setup = resolve_distributed_setup(train, gpus_available=False)
        self.engine = build_engine(cfg.model_copy(update={"train": train}), setup).engine
        _past_warmups(self.engine.module, cfg)

    def step(self, batch) -> None:
        self.engine.backward(self.engine(batch)["total"])
        self.engine.step()

    def parameters(self):
        return self.engine.module.parameters()


def _past_warmups(model: torch.nn.Module, cfg) -> None:
    model.set_schedule(cfg.train.max_steps, cfg.train.max_steps)  # every loss term on


def _build(cfg, name: str):
    torch.manual_seed(0)  # the same initial model in every engine
    if name in ("plain", "ddp"):
        model = build_salma(cfg.model_config_resolved).model
        _vectorise_scalar_parameters(model)  # as build_engine does, so every engine trains the same tensors
        model.train()
        _past_warmups(model, cfg)
        groups = parameter_groups([(n, p) for n, p in model.named_parameters() if p.requires_grad],
                                  lr=cfg.train.lr, multipliers=cfg.train.lr_multipliers)
        return _Torch(model, groups, cfg.train.grad_clip, ddp=name == "ddp")
    kind, _, stage = name.partition(":")
    if kind != "deepspeed" or stage not in ("0", "1", "2"):
        raise SystemExit(f"unknown engine {name!r}: use deepspeed:0, deepspeed:1, deepspeed:2, ddp or plain")
    return _DeepSpeed(cfg, int(stage))


def _worker(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    cfg = load_experiment(args.config, args.overrides)
    batches = mixture_batches(cfg, rank=rank, batches=args.steps)
    engines = [_build(cfg, name) for name in args.engines]
    times = np.zeros((len(engines), args.steps))
    for i, batch in enumerate(batches):
        order = range(len(engines)) if i % 2 == 0 else reversed(range(len(engines)))
        for e in order:
            dist.barrier()  # every engine's step starts together on both ranks
            start = time.perf_counter()
            engines[e].step(batch)
            times[e, i] = time.perf_counter() - start
    # A fingerprint of each engine's parameters: a data-parallel engine keeps the ranks equal.
    fingerprints = [float(sum(p.detach().double().abs().sum() for p in e.parameters())) for e in engines]
    np.save(f"{out}.rank{rank}.npy", times)
    np.save(f"{out}.params{rank}.npy", np.array(fingerprints))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--engines", nargs="+", default=["deepspeed:2", "deepspeed:0", "ddp", "plain"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides of the experiment (after --)")
    args = parser.parse_args(argv)
    if args.steps <= WARMUP_BATCHES + 1:
        parser.error(f"--steps must be above {WARMUP_BATCHES + 1}")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times")
        mp.spawn(_worker, args=(args, free_port(), out), nprocs=WORLD, join=True)
        times = np.stack([np.load(f"{out}.rank{r}.npy") for r in range(WORLD)], axis=1)  # (engine, rank, step)
        params = np.stack([np.load(f"{out}.params{r}.npy") for r in range(WORLD)], axis=1)  # (engine, rank)
    report, baseline = [], None
    for name, measured, fingerprint in zip(args.engines, times, params):
        t = measured[:, WARMUP_BATCHES:] * 1000
        step = float(t.max(axis=0).mean())
        baseline = baseline or step
        print(f"{name:>14}: slower rank {step:6.1f} ms per step (median {float(np.median(t.max(axis=0))):6.1f}), "
              f"ranks' mean {t.mean():6.1f} ms ({step / baseline:.3f} of the first)", flush=True)
        report.append({"engine": name, "slower_rank_ms": step, "mean_ms": float(t.mean()),
                       "parameter_fingerprints": fingerprint.tolist()})
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
