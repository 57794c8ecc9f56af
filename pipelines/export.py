"""``salma export``: a training checkpoint → a self-contained model folder (``salma.export``),
laid out as a Hugging Face model repository with a model card.

    salma export --checkpoint runs/<run> --out runs/<run>/export [--register NAME]
    salma export --checkpoint runs/<run>/checkpoint_001500 --out my_model

``runs/<run>`` is a run folder (``runs/quickstart-20261206-101500-1a2b3c``, as ``salma train``
prints it): its latest complete checkpoint is exported. When the checkpoint belongs to a run
folder with an MLflow run (its ``run.json``), the export is also logged on that run as the
MLflow model ``model`` (``runs:/<run id>/model``, ``pipelines.mlflow_model``), and
``--register NAME`` registers it in the model registry; ``--no-tracking`` skips both.

The checkpoint is validated completely first (``pipelines.checkpoint.read_checkpoint``). Its
trained weights are loaded strictly: every parameter the run trained must be in the checkpoint
and nothing unknown may be; frozen weights come from the pretrained model the config names.
Weights are written in the training dtype (``--dtype auto``: the precision the run trained in).
The model card lists the evaluation scores the run logged to MLflow (``eval/...``) and those of
``--scores`` files (``scores.csv`` of ``salma evaluate``). Upload the folder as it is
(``huggingface-cli upload OWNER/NAME DIR``); ``SalmaPredictor.from_pretrained("OWNER/NAME")``
loads it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from pipelines import console
from pipelines.checkpoint import META_FILE, InvalidCheckpointError, find_latest_checkpoint, load_model_state, read_checkpoint
from pipelines.config_errors import ConfigError
from salma.builder import BuiltSalma, build_salma
from salma.config import SalmaConfig
from salma.export import export_model, load_checked

logger = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def load_checkpoint_model(path: str | Path) -> BuiltSalma:
    """Rebuild the model a checkpoint was trained as (with its tokenizer and config) and load its
    trained weights strictly."""
    info = read_checkpoint(path)
    config = SalmaConfig.model_validate(info.config["model"])
    built = build_salma(config)
    model = built.model
    state = load_model_state(path)
    own = model.state_dict()
    # Every trained parameter must be there; frozen ones may be present (they come from the
    # pretrained model otherwise); nothing unknown.
    expected = set(info.trainable_parameters) | (set(state) & set(own))
    try:
        load_checked(model, state, expected=expected, source=str(path))
    except ValueError as err:
        raise InvalidCheckpointError(str(err)) from None
    return built


def training_dtype(checkpoint: str | Path) -> torch.dtype:
    """The precision the run trained in (recorded with the checkpoint; older checkpoints: the
    configured ``train.precision``, fp32 when that was ``auto``)."""
    meta = json.loads((Path(checkpoint) / META_FILE).read_text())
    precision = meta.get("precision") or meta.get("config", {}).get("train", {}).get("precision", "auto")
    if precision not in DTYPES:
        logger.warning("%s does not record its training precision; exporting in fp32", checkpoint)
        precision = "fp32"
    return DTYPES[precision]


def run_scores(run: dict | None) -> dict[str, float]:
    """The ``eval/...`` metrics a run (its ``run.json``) logged to MLflow; empty, with a
    warning, when they cannot be read."""
    if not run or not run.get("mlflow_run_id") or not run.get("tracking_uri"):
        return {}
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        metrics = MlflowClient(tracking_uri=run["tracking_uri"]).get_run(run["mlflow_run_id"]).data.metrics
    except MlflowException as err:
        logger.warning("the run's scores are not in the model card: MLflow run %s: %s", run["mlflow_run_id"], err)
        return {}
    return {k: float(v) for k, v in metrics.items() if k.startswith("eval/")}


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "auto",
    scores: dict[str, float] | None = None,
) -> Path:
    """Export a checkpoint folder (or the latest complete checkpoint of a run folder).
    ``dtype``: ``auto`` (the training precision), ``bf16`` or ``fp32``; ``scores`` go into the
    model card."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "salma_checkpoint.json").is_file():
        latest = find_latest_checkpoint(checkpoint)
        if latest is None:
            raise InvalidCheckpointError(f"{checkpoint} is neither a checkpoint nor a run folder with one")
        checkpoint = Path(latest.path)
    built = load_checkpoint_model(checkpoint)
    step = read_checkpoint(checkpoint).step
    out = export_model(
        built, out_dir, dtype=training_dtype(checkpoint) if dtype == "auto" else DTYPES[dtype], scores=scores,
        source=f"Exported by `salma export` from the training checkpoint `{checkpoint.name}` (step {step}) of run "
        f"`{checkpoint.parent.name}`.",
    )  # fmt: skip
    logger.info("exported %s to %s", checkpoint, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="salma export", description=__doc__,
                                     formatter_class=console.DocstringHelp)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a run folder (its latest)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--register", metavar="NAME", help="also register the MLflow model under this name")
    parser.add_argument("--no-tracking", action="store_true", help="do not log the export to the run's MLflow run")
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                        help="dtype of the written weights (auto: the training precision)")
    parser.add_argument("--scores", action="append", default=[], metavar="SCORES_CSV",
                        help="scores.csv of salma evaluate to list in the model card (repeatable)")
    args = parser.parse_args(argv)
    console.configure()
    run = None if args.no_tracking else run_of_checkpoint(args.checkpoint)
    if args.register and (run is None or not run.get("mlflow_run_id")):
        raise ConfigError(f"--register needs a checkpoint of a tracked training run; {args.checkpoint} has no run.json "
                          "with an MLflow run id beside it (or --no-tracking was given)")
    from pipelines.evaluate import read_scores_csv

    scores = run_scores(run)
    for path in args.scores:
        scores.update(read_scores_csv(path))
    out = export_checkpoint(args.checkpoint, args.out, dtype=args.dtype, scores=scores)
    print(f"exported to {out}; load with SalmaPredictor.from_pretrained({str(out)!r}), or upload the folder to the hub")
    if run is not None and run.get("mlflow_run_id") and run.get("tracking_uri"):
        from pipelines.mlflow_model import log_exported_model

        uri = log_exported_model(out, tracking_uri=run["tracking_uri"], run_id=run["mlflow_run_id"],
                                 register_as=args.register)
        print(f"MLflow model: {uri}" + (f" (registered as models:/{args.register})" if args.register else ""))
    return 0


def run_of_checkpoint(checkpoint: str | Path) -> dict | None:
    """The ``run.json`` of the run folder a checkpoint (or run folder) belongs to, or None."""
    from pipelines.run_folder import RunFolder

    path = Path(checkpoint).expanduser().resolve()
    for folder in (path, path.parent):
        try:
            return RunFolder.existing(str(folder)).run_info()
        except FileNotFoundError:
            continue
    return None


if __name__ == "__main__":
    raise SystemExit(main())
