"""``salma quickstart`` (``make quickstart``): the main job on the embedded default.

1. writes the synthetic datasets (RefCOCO / MeViS / Ref-YouTube-VOS / LLaVA formats) if needed,
2. trains tiny SALMA with 2 Ray Train workers (DeepSpeed ZeRO-2, CPU, gloo) on a local Ray,
3. exports the final checkpoint and evaluates it on the synthetic val and attention-drift splits
   with the benchmark metrics (Ray Data batch inference),
4. logs everything to MLflow (SQLite under the run folder's workdir) — the evaluation scores as
   metrics of the training run — and prints a results table, the run id and how to open the UI.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipelines import console
from pipelines.config import ExperimentConfig, load_experiment

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"


def results_table(metrics: dict[str, float], sources: list[str]) -> str:
    """Markdown table: one row per evaluation split, cIoU / gIoU for images, J / F / J&F for videos
    (all in percent, as the benchmark scripts print them), the attention-drift target share
    where the split has distractors."""
    columns = ["ciou", "giou", "j", "f", "jf", "drift/target_share"]
    lines = ["| split | cIoU % | gIoU % | J % | F % | J&F % | drift target share |", "|---|---|---|---|---|---|---|"]
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

    start = time.perf_counter()
    cfg: ExperimentConfig = load_experiment(config_path, overrides)
    ensure_synthetic(cfg)
    if not ray.is_initialized():
        # Logical CPUs beyond the train workers and their decode actors leave room for the
        # evaluation actors. The dashboard serves the state API that Ray Train's placement-group
        # cleaner polls (without it, it warns every few seconds); it binds to 127.0.0.1.
        ray.init(address="local", num_cpus=4, include_dashboard=True, **console.ray_init_options())
    result = train(cfg)
    train_s = time.perf_counter() - start
    export_dir = Path(result.run_dir) / "export"
    export_checkpoint(result.checkpoint_path, export_dir)
    sources = cfg.data.eval_sources
    uri = tracking_uri(cfg)
    metrics = evaluate_model(
        str(export_dir),
        sources,
        Path(result.run_dir) / "eval",
        num_actors=cfg.eval.num_actors,
        run_id=result.run_id,
        tracking_uri=uri,
    )
    total_s = time.perf_counter() - start
    print("\n" + results_table(metrics, [s.name for s in sources]))
    print(f"\ntrained in {train_s / 60:.1f} min, total {total_s / 60:.1f} min")
    print(f"MLflow run: {result.run_id}  (tracking URI {uri})")
    print(f"open the UI:  .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    return {"metrics": metrics, "run_id": result.run_id, "train_s": train_s, "total_s": total_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="salma quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment YAML (default: quickstart)")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. train.max_steps=100")
    args = parser.parse_args(argv)
    console.configure()
    quickstart(args.config, args.overrides)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
