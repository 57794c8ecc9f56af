"""Totals of the hostile-data corpus: kinds tried, handled cleanly, crashes, silent results.

Builds every kind of ``tests/salma/data/hostile_corpus.py`` (broken, malicious or misleading
input made from a fresh copy of the synthetic datasets, and hostile config values and files)
and runs each in a forked child process under a memory limit and a time limit, so that a
segfault, an exhausted memory limit or a hang counts as a crash instead of ending the count.
Prints one line per kind and the totals per category (what the input did before: crash, silent,
traversal, config). Outcomes: ``clean``, ``crash``, ``silent`` and ``other`` (see
``hostile_corpus.attempt``).

    PYTHONPATH=. .venv/bin/python benchmarks/hostile_corpus.py [--timeout 60] [--memory-gib 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "salma" / "data"))

from hostile_corpus import ALL_KINDS, Kind, attempt, prepare  # noqa: E402

from salma.data.synthetic import write_synthetic  # noqa: E402


def _child(kind: Kind, synthetic: Path, workdir: Path, memory_bytes: int, conn) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    try:
        conn.send(attempt(kind, prepare(synthetic, workdir)))
    except MemoryError:
        conn.send(("crash", "MemoryError"))


def run_kind(kind: Kind, synthetic: Path, workdir: Path, *, timeout: float, memory_bytes: int) -> tuple[str, str]:
    """(outcome, detail) of one kind, run in a forked child."""
    receive, send = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(
        target=_child, args=(kind, synthetic, workdir, memory_bytes, send)
    )
    child.start()
    send.close()
    ready = receive.poll(timeout)
    result = None
    if ready:
        try:
            result = receive.recv()
        except EOFError:  # the child died before sending (a segfault, the memory limit)
            pass
    child.join(5 if ready else 0)
    if child.is_alive():
        child.kill()
        child.join()
    if result is not None:
        return result
    if not ready:
        return "crash", f"no result within {timeout:.0f} s (hang or runaway work)"
    return "crash", f"the process died (exit code {child.exitcode})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per kind")
    parser.add_argument("--memory-gib", type=float, default=4.0, help="address-space limit per kind")
    args = parser.parse_args(argv)
    # Everything the kinds import is imported before forking, so each child starts warm.
    import pipelines.config  # noqa: F401
    import pipelines.data  # noqa: F401

    totals: Counter[str] = Counter()
    per_category: Counter[tuple[str, str]] = Counter()
    with tempfile.TemporaryDirectory(prefix="hostile_corpus_") as tmp:
        synthetic = Path(tmp) / "synthetic"
        write_synthetic(synthetic, seed=7, num_images=12, num_videos=4)
        for i, kind in enumerate(ALL_KINDS):
            workdir = Path(tmp) / f"kind{i:03d}"
            workdir.mkdir()
            outcome, detail = run_kind(kind, synthetic, workdir, timeout=args.timeout,
                                       memory_bytes=int(args.memory_gib * (1 << 30)))
            totals[outcome] += 1
            per_category[(kind.category, outcome)] += 1
            print(f"{outcome:6s} {kind.category:9s} {kind.name:42s} {detail[:110]}")
    print()
    print(f"kinds tried: {len(ALL_KINDS)}, handled cleanly: {totals['clean']}, crashes: {totals['crash']}, "
          f"silent: {totals['silent']}, reported under another reason: {totals['other']}")
    for category in sorted({c for c, _ in per_category}):
        counts = {o: per_category[(category, o)] for o in ("clean", "crash", "silent", "other")}
        print(f"  {category:9s} " + ", ".join(f"{o} {n}" for o, n in counts.items()))
    return 0 if totals["clean"] == len(ALL_KINDS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
