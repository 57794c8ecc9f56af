"""Batch-inference throughput on the synthetic MeViS video set: 1 vs 2 CPU actors, in one run.

Writes the synthetic datasets (``--videos`` MeViS train videos, so ``--videos / 4`` in
``valid_u``), starts a private local Ray cluster with ``--cpus`` CPUs, and runs ``pipelines.infer``
on ``valid_u`` with the tiny preset (random weights; the answer is teacher-forced so that every
expression gives a mask that SAM-2 tracks through every frame, the path a trained model takes),
first with 1 actor, then with 2 (one CPU and ``torch.set_num_threads(1)`` each), into fresh
output folders. A "frame" is one frame of one expression: every expression predicts every frame
of its video.

Two figures per run:
- steady state: frames / (last record finished − first record started), from the actors' own
  clocks: the inference rate once the actors are up (the target, ≥ 1.7× with 2 actors on 2 cores);
- end to end: frames / wall time of the whole ``infer`` call, including starting the actors
  (importing torch, building the model) and writing the PNGs, which a small set cannot amortise.

    .venv/bin/python benchmarks/infer_throughput.py [--videos 160] [--key-frames 5] [--cpus 2] [--repeats 3]

The actors are ordinary (niced) Ray worker processes: on a machine where other jobs hold CPUs the
2-actor run shares them, which shows as a longer ``s/video``; ``--repeats`` alternates the runs
and reports the median speed-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from pipelines.config import EvalConfig
from pipelines.infer import InferSummary, infer, parse_dataset
from pipelines.local_ray import local_ray
from salma.data.synthetic import write_synthetic


def steady_state(summary: InferSummary) -> tuple[float, float, float]:
    """(frames/s over the actors' busy window, records in flight on average, mean s per record).

    In-flight records near the actor count with a per-record time that does not grow means the
    actors really ran in parallel; a per-record time that grows with the actor count means they
    shared CPUs (another load on the machine, or fewer cores than actors)."""
    first = min(r["started_at"] for r in summary.per_record)
    last = max(r["finished_at"] for r in summary.per_record)
    busy = sum(r["seconds"] for r in summary.per_record)
    return summary.frames / (last - first), busy / (last - first), busy / len(summary.per_record)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=160, help="synthetic MeViS train videos (valid_u gets a quarter)")
    parser.add_argument("--key-frames", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=2, help="logical CPUs of the private Ray cluster")
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternate 1- and 2-actor runs this many times; the speed-up is the median")
    parser.add_argument("--work", help="folder for data and outputs (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work or tempfile.mkdtemp(prefix="salma-infer-bench-"))
    data = work / "data"
    if not (data / "manifest.json").is_file():
        write_synthetic(data, seed=0, num_images=2, num_videos=args.videos)
    source = parse_dataset(f"mevis:{data / 'mevis'}", split="valid_u")
    print(f"data: {source.root} split valid_u; load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    rows = []
    with local_ray(num_cpus=args.cpus):
        for _ in range(args.repeats):
            for actors in (1, 2):
                settings = EvalConfig(num_actors=actors, cpus_per_actor=1, threads_per_actor=1, generate=False,
                                      num_key_frames=args.key_frames, visual_samples=0, use_gpu=False)
                started, driver_cpu = time.perf_counter(), time.process_time()
                summary = infer("tiny", source, work / f"out_{actors}", settings=settings, resume=False)
                wall = time.perf_counter() - started
                driver = (time.process_time() - driver_cpu) / wall
                rows.append((actors, summary, *steady_state(summary), summary.frames / wall, wall, driver))
    print(f"{'actors':>6} {'videos':>6} {'frames':>7} {'steady frames/s':>16} {'in flight':>9} {'s/video':>8} "
          f"{'end-to-end frames/s':>20} {'wall s':>7} {'driver CPUs':>11}")
    for actors, summary, steady, in_flight, per_video, end_to_end, wall, driver in rows:
        print(f"{actors:>6} {summary.records:>6} {summary.frames:>7} {steady:>16.1f} {in_flight:>9.2f} "
              f"{per_video:>8.3f} {end_to_end:>20.1f} {wall:>7.1f} {driver:>11.2f}")
    pairs = list(zip(rows[0::2], rows[1::2]))
    steady = statistics.median(two[2] / one[2] for one, two in pairs)
    end_to_end = statistics.median(two[5] / one[5] for one, two in pairs)
    print(f"speed-up with 2 actors (median of {len(pairs)}): steady state {steady:.2f}x, end to end {end_to_end:.2f}x "
          f"(target >= 1.7x steady state); load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
