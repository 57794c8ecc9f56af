"""``salma export``: a training checkpoint → a self-contained model folder (``salma.export``).

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
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipelines import console
from pipelines.config_errors import ConfigError
from pipelines.checkpoint import InvalidCheckpointError, find_latest_checkpoint, load_model_state, read_checkpoint
from salma.builder import build_salma
from salma.config import SalmaConfig
from salma.export import check_weights, export_model
from salma.model import SalmaModel

logger = logging.getLogger(__name__)


def load_checkpoint_model(path: str | Path) -> SalmaModel:
    """Rebuild the model a checkpoint was trained as and load its trained weights strictly."""
    info = read_checkpoint(path)
    config = SalmaConfig.model_validate(info.config["model"])
    model = build_salma(config)
    state = load_model_state(path)
    own = model.state_dict()
    # Every trained parameter must be there; frozen ones may be present (they come from the
    # pretrained model otherwise); nothing unknown.
    expected = set(info.trainable_parameters) | (set(state) & set(own))
    try:
        check_weights(state, own, expected=expected, source=str(path))
    except ValueError as err:
        raise InvalidCheckpointError(str(err)) from None
    model.load_state_dict(state, strict=False)
    return model


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Export a checkpoint folder (or the latest complete checkpoint of a run folder)."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "salma_checkpoint.json").is_file():
        latest = find_latest_checkpoint(checkpoint)
        if latest is None:
            raise InvalidCheckpointError(f"{checkpoint} is neither a checkpoint nor a run folder with one")
        checkpoint = Path(latest.path)
    model = load_checkpoint_model(checkpoint)
    out = export_model(model, out_dir)
    logger.info("exported %s to %s", checkpoint, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="salma export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a run folder (its latest)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--register", metavar="NAME", help="also register the MLflow model under this name")
    parser.add_argument("--no-tracking", action="store_true", help="do not log the export to the run's MLflow run")
    args = parser.parse_args(argv)
    console.configure()
    run = None if args.no_tracking else run_of_checkpoint(args.checkpoint)
    if args.register and (run is None or not run.get("mlflow_run_id")):
        raise ConfigError(f"--register needs a checkpoint of a tracked training run; {args.checkpoint} has no run.json "
                          "with an MLflow run id beside it (or --no-tracking was given)")
    out = export_checkpoint(args.checkpoint, args.out)
    print(f"exported to {out}; load with SalmaPredictor.from_pretrained({str(out)!r})")
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
