"""The quickstart's time budget and its learning target, over several data seeds.

Runs ``salma quickstart`` once per seed (``data.seed=S train.seed=S``: another data order, other
random frames, objects and loss points; the model's initialisation and the synthetic data stay),
each in a fresh process with its own local Ray, and prints per run the wall time of the whole
command and of each phase (``<run folder>/quickstart.json``), refcoco_val cIoU / gIoU and
mevis_val J&F, then the smallest image cIoU against the target.

The first seed pays for the SAM-2 pre-training unless its checkpoint is already cached;
``--fresh-sam`` deletes the cached one first, so that the first run times what a fresh clone
does after ``make env``. Time a run only on an otherwise idle machine; the scores do not depend
on the load (a run replays to the last digit).

    .venv/bin/python benchmarks/quickstart_budget.py --seeds 0 1 2 --fresh-sam
    .venv/bin/python benchmarks/quickstart_budget.py --seeds 0 -- train.max_steps=800

Figures: docs/benchmarks.md ("Quickstart").
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from pipelines.config import load_experiment
from pipelines.quickstart import DEFAULT_CONFIG, SUMMARY_FILE

TARGET_MINUTES = 10.0
TARGET_CIOU = 50.0


def run_once(config: str, overrides: list[str], seed: int) -> dict:
    command = [sys.executable, "-m", "pipelines.cli", "quickstart", "--config", config,
               f"data.seed={seed}", f"train.seed={seed}", *overrides]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # its output is shown on failure
    wall = time.perf_counter() - began
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"seed {seed}: salma quickstart exited with {done.returncode}")
    found = re.search(r"^run folder:\s+(\S+)", done.stdout, flags=re.MULTILINE)
    if not found:
        raise SystemExit(f"seed {seed}: no 'run folder:' line in the quickstart's output")
    record = json.loads((Path(found.group(1)) / SUMMARY_FILE).read_text())
    return {**record, "seed": seed, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fresh-sam", action="store_true", help="delete the cached pre-trained SAM-2 first")
    parser.add_argument("--json", help="also write every run's record here")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides for every run (after --)")
    args = parser.parse_args(argv)
    if args.fresh_sam:
        cfg = load_experiment(args.config, args.overrides)
        # Without its checkpoint the cached SAM-2 counts as missing (its record beside it is
        # rewritten by the next pre-training).
        Path(cfg.absolute(cfg.sam_pretrain.out)).unlink(missing_ok=True)
    runs = []
    for seed in args.seeds:
        run = run_once(args.config, args.overrides, seed)
        runs.append(run)
        m = run["metrics"]
        phases = ", ".join(f"{name} {s / 60:.1f}" for name, s in run["phases_s"].items())
        print(f"seed {seed}: {run['wall_s'] / 60:.1f} min ({phases} min); "
              f"refcoco_val cIoU {m.get('eval/refcoco_val/ciou', float('nan')):.2f} "
              f"gIoU {m.get('eval/refcoco_val/giou', float('nan')):.2f}, "
              f"mevis_val J&F {m.get('eval/mevis_val/jf', float('nan')):.2f}; {run['run_dir']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
    worst = min(r["metrics"].get("eval/refcoco_val/ciou", float("nan")) for r in runs)
    print(f"first run {runs[0]['wall_s'] / 60:.1f} min (target <= {TARGET_MINUTES:g}); "
          f"lowest refcoco_val cIoU {worst:.2f} (target >= {TARGET_CIOU:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
