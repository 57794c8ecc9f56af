"""``salma quickstart`` (``make quickstart``): the main job on the embedded default.

1. writes the synthetic datasets (RefCOCO / MeViS / Ref-YouTube-VOS / LLaVA formats) if needed,
2. pre-trains the tiny preset's random SAM-2 with click and box prompts (once: the checkpoint,
   ``data/sam2_pretrained.pt``, is reused), then trains tiny SALMA with 2 Ray Train workers
   (DeepSpeed ZeRO-2, CPU, gloo) on a local Ray,
3. exports the final checkpoint (``<run>/export``, also logged as the run's MLflow model) and
   evaluates it on the synthetic val and attention-drift splits with the benchmark metrics (Ray
   Data batch inference),
4. logs everything to MLflow (SQLite under the run folder's workdir) — the evaluation scores as
   metrics of the training run, at its final step — and prints a results table, the time of each
   phase, the folders it wrote, the run id and how to open the UI; the scores and phase times also
   go to ``<run folder>/quickstart.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from pipelines import console
from pipelines.config import ExperimentConfig, load_experiment
from pipelines.local_ray import start_local_ray

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
# What ``quickstart`` returns, also written into the run folder (benchmarks/quickstart_budget.py).
SUMMARY_FILE = "quickstart.json"


def results_table(metrics: dict[str, float], sources: list[str]) -> str:
    """Markdown table: one row per evaluation split, cIoU / gIoU for images, J / F / J&F for videos
    (all in percent, as the benchmark scripts print them), the MBA update-energy target share
    where the split has distractors."""
    columns = ["ciou", "giou", "j", "f", "jf", "update_energy/target_share"]
    lines = ["| split | cIoU % | gIoU % | J % | F % | J&F % | update-energy target share |", "|---|---|---|---|---|---|---|"]
    for name in sources:
        cells = []
        for col in columns:
            value = metrics.get(f"eval/{name}/{col}")
            cells.append("" if value is None else f"{value:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quickstart(config_path: str | Path = DEFAULT_CONFIG, overrides: list[str] | None = None) -> dict:
    import ray

    from pipelines.data import ensure_synthetic
    from pipelines.evaluate import evaluate_model
    from pipelines.export import export_checkpoint
    from pipelines.tracking import tracking_uri
    from pipelines.train import train

    from pipelines.mlflow_model import log_exported_model
    from pipelines.progress import phase_line

    start = time.perf_counter()
    cfg: ExperimentConfig = load_experiment(config_path, overrides)
    ensure_synthetic(cfg)
    phases = {"data": time.perf_counter() - start}
    if not ray.is_initialized():
        # Logical CPUs beyond the train workers and their decode actors leave room for the
        # evaluation actors. The dashboard serves the state API that Ray Train's placement-group
        # cleaner polls (without it, it warns every few seconds); it binds to 127.0.0.1, and so
        # does every other server of this cluster (pipelines.local_ray).
        start_local_ray(num_cpus=4, include_dashboard=True, **console.ray_init_options())
    result = train(cfg)
    phases["SAM-2 pre-training and data checks"] = result.phase_seconds.get("prepare", 0.0)
    phases["training"] = result.phase_seconds.get("train", 0.0)
    began = time.perf_counter()
    export_dir = Path(result.run_dir) / "export"
    export_checkpoint(result.checkpoint_path, export_dir)
    uri = tracking_uri(cfg)
    model_uri = log_exported_model(export_dir, tracking_uri=uri, run_id=result.run_id) if result.run_id else None
    phases["export"] = time.perf_counter() - began
    phase_line("export", f"{export_dir}" + (f" (MLflow model {model_uri})" if model_uri else ""))
    began = time.perf_counter()
    sources = cfg.data.eval_sources
    eval_dir = Path(result.run_dir) / "eval"
    metrics = evaluate_model(
        str(export_dir),
        sources,
        eval_dir,
        num_actors=cfg.eval.num_actors,
        settings=cfg.eval,
        run_id=result.run_id,
        tracking_uri=uri,
        step=int(result.metrics.get("step", cfg.train.max_steps)),
    )
    phases["evaluation"] = time.perf_counter() - began
    total_s = time.perf_counter() - start
    record = {"metrics": metrics, "run_id": result.run_id, "phases_s": phases, "total_s": total_s,
              "export_dir": str(export_dir), "run_dir": str(result.run_dir)}
    (Path(result.run_dir) / SUMMARY_FILE).write_text(json.dumps(record, indent=1) + "\n")
    print("\n" + results_table(metrics, [s.name for s in sources]))
    print("\n" + summary(phases, total_s, run_dir=result.run_dir, export_dir=export_dir, eval_dir=eval_dir,
                          run_id=result.run_id, uri=uri, model_uri=model_uri))
    return record


def summary(phases: dict[str, float], total_s: float, *, run_dir: str, export_dir: Path, eval_dir: Path,
            run_id: str | None, uri: str, model_uri: str | None) -> str:
    """Where the time went, phase by phase, and the folders and commands a user needs next."""
    times = ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in phases.items())
    lines = [
        f"time: {times}; total {total_s / 60:.1f} min",
        f"run folder:   {run_dir}",
        f"model:        {export_dir}   (try: salma segment PHOTO.jpg \"the ...\" --model {export_dir})",
        f"evaluation:   {eval_dir}   (scores.md, per-split predictions and visual reports)",
    ]
    if run_id:
        lines.append(f"MLflow run:   {run_id}" + (f", model {model_uri}" if model_uri else "") + f"  (tracking URI {uri})")
        lines.append(f"open the UI:  .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
                     "   (experiment 'salma', Runs tab)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="salma quickstart", description=__doc__,
                                     formatter_class=console.DocstringHelp)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment YAML (default: quickstart)")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. train.max_steps=100")
    args = parser.parse_args(argv)
    console.configure()
    quickstart(args.config, args.overrides)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
