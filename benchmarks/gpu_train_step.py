"""GPU readiness of SALMA-1B: one training step at the paper recipe's sizes, random weights.

The model is the ``salma-1b`` preset built with random weights (no checkpoint needed: InternVL2.5-1B's
architecture, SAM-2.1 Hiera-L, LoRA r=128, frozen encoders), wrapped by DeepSpeed exactly as
training does (``pipelines.train.build_engine``: ZeRO-2, AdamW, the warm-up + cosine schedule) and
stepped by ``pipelines.train.train_step`` on in-memory batches made by the real encoding path
(``salma.testing.random_batch``: 5 frames × up to 5 objects per video sample by default). Data
loading is left out: this measures the model step. For gradient checkpointing off and on it prints

- samples/s over ``--steps`` timed steps (after ``--warmup`` steps),
- peak memory (CUDA: ``max_memory_allocated``; CPU: the process's peak RSS),
- an MFU estimate: the FLOPs of one step counted with torch's flop formulas
  (``torch.utils.flop_counter``: forward and backward matmuls, convolutions and attention, with
  checkpointing off, so recomputation is not counted as useful work), times samples/s, over the
  accelerator's peak (``--peak-tflops``; default 989 for H100/H200 bf16 dense, none on CPU).

    python benchmarks/gpu_train_step.py                       # salma-1b, cuda, bf16
    python benchmarks/gpu_train_step.py --size tiny --device cpu --precision fp32 --steps 2
    python benchmarks/gpu_train_step.py --json out.json       # also write the numbers

The tiny CPU run is what the test suite runs; the salma-1b numbers need a GPU (docs/benchmarks.md
says which have been measured).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from itertools import repeat
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

import torch  # noqa: E402

from pipelines.config import ExperimentConfig, load_experiment  # noqa: E402
from pipelines.deepspeed_config import DistributedSetup  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # bf16 dense, vendor figures


def experiment(size: str, *, batch_size: int, checkpointing: bool, precision: str, steps: int) -> ExperimentConfig:
    overrides = [
        "name=gpu_train_step",
        "tracking.enabled=false",
        f"model.preset={size}",
        f"model.mllm.gradient_checkpointing={str(checkpointing).lower()}",
        "train.num_workers=0",
        "train.zero_stage=2",
        f"train.precision={precision}",
        f"train.batch_size_per_worker={batch_size}",
        "train.grad_accum=1",
        f"train.max_steps={steps}",
    ]
    return load_experiment(None, overrides)


def peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def step_flops(engine, batch, cfg: ExperimentConfig, dtype) -> int:
    """FLOPs of one optimizer step (forward + backward) on ``batch``, counted with torch's own
    per-operator formulas (``torch.utils.flop_counter.flop_registry``: matmuls, convolutions,
    attention). ``FlopCounterMode`` itself also tracks modules, which fails on this model's
    frozen-then-trained graph, so the counting is done by a plain dispatch mode."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    from pipelines.train import train_step

    class CountFlops(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += int(formula(*args, **kwargs, out_val=out))
            return out

    counter = CountFlops()
    with counter:
        train_step(engine, repeat(batch), step=0, cfg=cfg, rank=0, dtype=dtype)
    return counter.total


def measure(args, *, checkpointing: bool, flops: int | None) -> dict:
    """Build, warm up and time one setting; returns its numbers (and the counted FLOPs)."""
    from pipelines.train import _process_group, build_engine, train_step
    from salma.testing import random_batch

    use_gpu = args.device == "cuda"
    setup = DistributedSetup(use_gpu=use_gpu, backend="nccl" if use_gpu else "gloo",
                             precision=args.precision, torch_adam=not use_gpu)  # fmt: skip
    cfg = experiment(args.size, batch_size=args.batch_size, checkpointing=checkpointing,
                     precision=args.precision, steps=args.warmup + args.steps + 1)  # fmt: skip
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    with _process_group(setup):
        if use_gpu:
            torch.cuda.set_device(0)
            torch.cuda.reset_peak_memory_stats()
        engine, _, trainable, _, tokenizer = build_engine(cfg, setup)
        batch = random_batch(cfg.model_config_resolved, batch_size=args.batch_size, num_frames=args.frames,
                             num_objects=args.objects, tokenizer=tokenizer)  # fmt: skip
        batches = repeat(batch)
        if flops is None and not checkpointing:
            flops = step_flops(engine, batch, cfg, dtype)
        for step in range(args.warmup):
            train_step(engine, batches, step=step, cfg=cfg, rank=0, dtype=dtype)
        if use_gpu:
            torch.cuda.synchronize()
        begin = time.perf_counter()
        for step in range(args.steps):
            losses, _ = train_step(engine, batches, step=args.warmup + step, cfg=cfg, rank=0, dtype=dtype)
        if use_gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - begin
        parameters = sum(p.numel() for p in engine.module.parameters())
        trained = sum(p.numel() for n, p in engine.module.named_parameters() if n in set(trainable))
    samples_per_s = args.steps * args.batch_size / seconds
    peak = args.peak_tflops
    return {
        "gradient_checkpointing": checkpointing,
        "samples_per_s": samples_per_s,
        "step_seconds": seconds / args.steps,
        "peak_memory_gib": peak_memory_bytes(args.device) / 2**30,
        "flops_per_sample": None if flops is None else flops / args.batch_size,
        "mfu": None if flops is None or peak is None else flops / args.batch_size * samples_per_s / (peak * 1e12),
        "parameters": parameters,
        "trained_parameters": trained,
        "loss_total": float(losses["total"]),
        "_flops": flops,
    }


def default_peak_tflops(device: str) -> float | None:
    if device != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("salma-1b", "tiny"), default="salma-1b")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--batch-size", type=int, default=2, help="samples per step (the recipe's per-GPU batch)")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--objects", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--checkpointing", choices=("off", "on", "both"), default="both")
    parser.add_argument("--peak-tflops", type=float, help="accelerator peak for the MFU (default: by device name)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible; use --device cpu for a functional run")
    if args.peak_tflops is None:
        args.peak_tflops = default_peak_tflops(args.device)
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    results, flops = [], None
    for checkpointing in settings:
        result = measure(args, checkpointing=checkpointing, flops=flops)
        flops = result.pop("_flops")
        results.append(result)
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    report = {"size": args.size, "device": device, "precision": args.precision, "zero_stage": 2,
              "batch_size": args.batch_size, "frames": args.frames, "objects": args.objects,
              "steps": args.steps, "peak_tflops": args.peak_tflops, "results": results}  # fmt: skip
    print(f"{args.size} on {device}, {args.precision}, ZeRO-2, batch {args.batch_size} "
          f"({args.frames} frames x {args.objects} objects), {args.steps} timed steps")  # fmt: skip
    print(f"{'checkpointing':>13} {'samples/s':>10} {'step s':>8} {'peak GiB':>9} {'GFLOP/sample':>13} {'MFU':>7}")
    for r in results:
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        gflop = "n/a" if r["flops_per_sample"] is None else f"{r['flops_per_sample'] / 1e9:.1f}"
        print(f"{'on' if r['gradient_checkpointing'] else 'off':>13} {r['samples_per_s']:>10.3f} "
              f"{r['step_seconds']:>8.3f} {r['peak_memory_gib']:>9.2f} {gflop:>13} {mfu:>7}")  # fmt: skip
    if len(results) == 2 and results[0]["samples_per_s"]:
        print(f"checkpointing on / off: {results[1]['samples_per_s'] / results[0]['samples_per_s']:.2f}x samples/s, "
              f"{results[1]['peak_memory_gib'] / results[0]['peak_memory_gib']:.2f}x peak memory")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
