"""Time and peak memory of ``salma convert internvl`` on an InternVL2.5-1B-size checkpoint.

Writes a random-weight replica of the InternVL2.5-1B release (its architecture: InternViT-300M +
Qwen2.5-0.5B with a separate head, 0.94 B parameters, bf16) sharded into ``--shard-mb`` files,
then converts it in a fresh process (``python -m pipelines.cli convert internvl``) and reports the
conversion's wall time and peak resident memory (``ru_maxrss`` of the child) against the largest
shard and the whole checkpoint. The same measurement of a process that only imports the
converter is reported as the baseline, so that the part the tensors add is visible. Resident
memory includes the pages of the safetensors files the process has mapped.

    python benchmarks/convert_internvl.py --work /tmp/convert-bench [--shard-mb 500] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))


# Run in a fresh interpreter: a forked child's ru_maxrss counts the pages it shared with its
# parent before exec, so the measuring process must itself be small.
_MEASURE = (
    "import json, resource, subprocess, sys, time; t = time.perf_counter(); "
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(json.dumps([time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024]))"
)


def child_peak_rss(command: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of ``command`` run to completion in a new process."""
    env = {**os.environ, "PYTHONPATH": f"{REPO_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-c", _MEASURE, *command], check=True, env=env,
                            capture_output=True, text=True)  # fmt: skip
    seconds, peak = json.loads(result.stdout.strip().splitlines()[-1])
    return seconds, int(peak)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="scratch folder (about 4 GB is written)")
    parser.add_argument("--shard-mb", type=int, default=500, help="source shard size in MiB")
    parser.add_argument("--sizes", choices=("1b", "tiny"), default="1b", help="tiny: a quick functional run")
    parser.add_argument("--keep", action="store_true", help="keep the replica and the converted folder")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)

    import torch

    from salma.checkpoint_layout import stored_tensors
    from salma.release_replicas import INTERNVL2_5_1B, tiny_sizes, write_internvl_release

    work = Path(args.work)
    source, out = work / "InternVL2_5-1B", work / "InternVL2_5-1B-hf"
    for path in (source, out):
        if path.exists():
            shutil.rmtree(path)
    sizes = INTERNVL2_5_1B if args.sizes == "1b" else tiny_sizes()
    begin = time.perf_counter()
    write_internvl_release(source, sizes, dtype=torch.bfloat16, max_shard_bytes=args.shard_mb * 2**20)
    write_seconds = time.perf_counter() - begin
    specs = stored_tensors(source)
    shard_bytes = {}
    for spec in specs.values():
        shard_bytes[spec.file] = shard_bytes.get(spec.file, 0) + spec.numel * 2
    largest = max((source / f).stat().st_size for f in shard_bytes)
    total = sum((source / f).stat().st_size for f in shard_bytes)

    python = sys.executable
    _, baseline = child_peak_rss([python, "-c", "import salma.internvl_conversion, pipelines.convert"])
    seconds, peak = child_peak_rss([python, "-m", "pipelines.cli", "convert", "internvl", str(source), "--out", str(out)])
    written = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    report = {
        "parameters": sum(spec.numel for spec in specs.values()),
        "dtype": "bfloat16",
        "source_shards": len(shard_bytes),
        "largest_shard_mib": largest / 2**20,
        "checkpoint_mib": total / 2**20,
        "written_mib": written / 2**20,
        "replica_write_seconds": write_seconds,
        "convert_seconds": seconds,
        "peak_rss_mib": peak / 2**20,
        "baseline_rss_mib": baseline / 2**20,
        "peak_over_largest_shard": (peak - baseline) / largest,
        "peak_over_checkpoint": (peak - baseline) / total,
        "load_average": os.getloadavg(),
    }
    print(f"InternVL2.5-1B-size replica ({report['parameters']:,} parameters, bf16): {len(shard_bytes)} shards, "
          f"largest {report['largest_shard_mib']:.0f} MiB of {report['checkpoint_mib']:.0f} MiB")  # fmt: skip
    print(f"convert: {seconds:.1f} s, peak RSS {report['peak_rss_mib']:.0f} MiB "
          f"(process baseline {report['baseline_rss_mib']:.0f} MiB)")  # fmt: skip
    print(f"peak above baseline = {report['peak_over_largest_shard']:.2f} x the largest shard "
          f"= {report['peak_over_checkpoint']:.2f} x the checkpoint")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if not args.keep:
        shutil.rmtree(source)
        shutil.rmtree(out)
    return report


if __name__ == "__main__":
    main()
