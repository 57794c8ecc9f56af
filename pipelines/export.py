"""``salma export``: a training checkpoint → a self-contained model folder (``salma.export``).

    salma export --checkpoint runs/quickstart/checkpoint_001500 --out runs/quickstart/export

The checkpoint is validated completely first (``pipelines.checkpoint.read_checkpoint``). Its
trained weights are loaded strictly: every parameter the run trained must be in the checkpoint
and nothing unknown may be; frozen weights come from the pretrained model the config names.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipelines import console
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
    args = parser.parse_args(argv)
    console.configure()
    out = export_checkpoint(args.checkpoint, args.out)
    print(f"exported to {out}; load with SalmaPredictor.from_pretrained({str(out)!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
