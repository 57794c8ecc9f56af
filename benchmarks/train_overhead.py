"""Overhead of Ray Train: steps/s of the same training under Ray Train + DeepSpeed and under a bare
torch.distributed + DeepSpeed launch with the same world size, measured in one run.

Both sides run the tiny model on the same synthetic data through the same code: the model and
engine come from ``pipelines.train.build_engine``, the data from ``pipelines.data.worker_batches``
(Ray Data, on the same local Ray cluster), each step is ``pipelines.train.train_step``. The Ray
side is ``pipelines.train.train`` itself (tracking off, one checkpoint at the end, after the timed
window). The bare side starts ``--workers`` processes the way ``torchrun``/the ``deepspeed``
launcher would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, gloo) with the same threads per
process that Ray gives its workers (``OMP_NUM_THREADS`` = CPUs per worker) and, by default, at
the nice level Ray gives its workers (15). With ``--bare-niceness 0`` the bare workers run at
normal priority: on a busy 2-core machine they then take the CPU from the niced Ray Data decode
actors they share it with, an advantage the niced Ray Train workers do not have, so the ratio
measures scheduling priority as well as overhead. Throughput is
measured on rank 0 from the end of the first step to the end of the last (the first step pays for
warm-up on both sides). The sides run ``--repeats`` times, alternating which goes first; medians
are reported, and the ratio bare / Ray Train (target ≤ 1.10).

    .venv/bin/python benchmarks/train_overhead.py [--workers 2] [--steps 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
RAY_WORKER_NICENESS = 15  # the raylet's default worker_niceness (RAY_worker_niceness)
sys.path.insert(0, str(REPO_DIR))

from pipelines.config import ExperimentConfig, load_experiment  # noqa: E402


def experiment(data_dir: Path, work: Path, *, workers: int, steps: int) -> ExperimentConfig:
    return load_experiment(
        None,
        [
            f"workdir={work}",
            "name=overhead",
            "model.preset=tiny",
            "tracking.enabled=false",
            "data.num_frames=2",
            "data.max_objects=2",
            "data.cpus_per_task=0.25",
            f"data.sources=[{{name: refcoco, format: refcoco, root: {data_dir / 'refer' / 'refcoco'}}}]",
            f"train.num_workers={workers}",
            "train.cpus_per_worker=1",
            "train.batch_size_per_worker=1",
            f"train.max_steps={steps}",
            f"train.checkpoint_every={steps}",
            f"train.log_every={steps}",
        ],
    )


# ------------------------------------------------------------------------------- Ray Train side
def ray_train_steps_per_s(cfg: ExperimentConfig) -> float:
    from pipelines.train import train

    return float(train(cfg).metrics["steps_per_s"])


# ------------------------------------------------------------------------------- bare side
def bare_steps_per_s(cfg: ExperimentConfig, *, ray_address: str, out: Path, niceness: int) -> float:
    """Launch ``workers`` plain processes (no Ray Train) at ``niceness`` and return rank 0's
    steps/s."""
    world = cfg.train.num_workers
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config_file = out / "bare_config.json"
    config_file.write_text(cfg.model_dump_json())
    result_file = out / "bare_result.json"
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": str(int(cfg.train.cpus_per_worker)),
            "PYTHONPATH": os.pathsep.join([str(REPO_DIR), os.environ.get("PYTHONPATH", "")]),
        }
        cmd = [sys.executable, __file__, "--bare-worker", str(config_file), str(result_file), ray_address]
        log = open(out / f"bare_rank{rank}.log", "w")
        procs.append(subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: os.nice(niceness) if niceness else None
        ))
    codes = [p.wait() for p in procs]
    if any(codes):
        tail = (out / "bare_rank0.log").read_text()[-3000:]
        raise RuntimeError(f"bare workers exited with {codes}; rank 0 log ends with:\n{tail}")
    return float(json.loads(result_file.read_text())["steps_per_s"])


def bare_worker(config_file: str, result_file: str, ray_address: str) -> None:
    import ray
    import torch.distributed as dist

    from pipelines.data import worker_batches
    from pipelines.deepspeed_config import resolve_distributed_setup
    from pipelines.train import build_engine, train_step

    ray.init(address=ray_address, logging_level="ERROR")  # Ray Data only: the same data as the trainer
    cfg = ExperimentConfig.model_validate_json(Path(config_file).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    setup = resolve_distributed_setup(cfg.train, gpus_available=False)
    engine, _, _, _, tokenizer = build_engine(cfg, setup)
    batches = worker_batches(cfg, rank=rank, world_size=world, start_step=0, tokenizer=tokenizer)
    first_end = None
    steps = cfg.train.max_steps
    for step in range(steps):
        engine.module.set_schedule(step, steps)
        train_step(engine, batches, step=step, cfg=cfg, rank=rank, dtype=None)
        if first_end is None:
            first_end = time.perf_counter()
    rate = (steps - 1) / (time.perf_counter() - first_end)
    if rank == 0:
        Path(result_file).write_text(json.dumps({"steps_per_s": rate}))
    dist.barrier()
    # The measurement is on disk: leave without tearing down Ray Data's background threads, which
    # race with ray.shutdown() in a plain driver process and turn a clean exit into exit code 1.
    os._exit(0)


# ------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=200, help="synthetic RefCOCO train images")
    parser.add_argument(
        "--bare-niceness", type=int, default=RAY_WORKER_NICENESS,
        help="nice level of the bare workers; Ray starts its workers at 15 (raylet worker_niceness), "
        "below Ray's own daemons, so the default compares like with like; 0 shows what the lower "
        "priority costs Ray Train on a busy machine",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from pipelines.local_ray import local_ray
    from salma.data.synthetic import write_synthetic

    with tempfile.TemporaryDirectory(prefix="salma-overhead-") as tmp:
        tmp_path = Path(tmp)
        write_synthetic(tmp_path / "data", seed=0, num_images=args.images, num_videos=2)
        cfg = experiment(tmp_path / "data", tmp_path / "runs", workers=args.workers, steps=args.steps)
        ray_rates, bare_rates = [], []
        # Train workers plus room for the Ray Data decode tasks.
        with local_ray(num_cpus=args.workers + 2, logging_level="ERROR") as address:
            for repeat in range(args.repeats):
                # Alternate which side goes first, so that a drift in machine load cancels out.
                sides = [("ray", lambda: ray_train_steps_per_s(cfg)),
                         ("bare", lambda: bare_steps_per_s(cfg, ray_address=address, out=tmp_path,
                                                           niceness=args.bare_niceness))]
                for name, measure in sides if repeat % 2 == 0 else sides[::-1]:
                    (ray_rates if name == "ray" else bare_rates).append(measure())
                print(f"repeat {repeat}: Ray Train {ray_rates[-1]:.2f} steps/s, bare {bare_rates[-1]:.2f} steps/s", flush=True)
    ray_rate, bare_rate = statistics.median(ray_rates), statistics.median(bare_rates)
    ratio = bare_rate / ray_rate
    paired = statistics.median(b / r for b, r in zip(bare_rates, ray_rates))
    print(
        f"\nworld size {args.workers}, {args.steps} steps, tiny model, batch 1 per worker, CPU/gloo/fp32, "
        f"bare workers at nice {args.bare_niceness}\n"
        f"Ray Train + DeepSpeed : {ray_rate:.3f} steps/s (median of {args.repeats})\n"
        f"bare DeepSpeed        : {bare_rate:.3f} steps/s (median of {args.repeats})\n"
        f"ratio bare / Ray Train: {ratio:.3f} (target <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'}); "
        f"median of the per-repeat ratios {paired:.3f}"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--bare-worker":
        bare_worker(*sys.argv[2:])
    else:
        raise SystemExit(main())
