"""Weights on disk: strict safetensors state dicts and the exported model folder.

An exported folder is self-contained and loads without the training code:

    <out>/salma_config.json     the model config (LoRA off: adapters are merged)
    <out>/mllm/                 the InternVL MLLM, transformers ``save_pretrained`` (safetensors),
                                with its tokenizer — loadable by transformers alone
    <out>/salma.safetensors     everything else: SAM-2, the [SEG]/expression projectors, MBA

Loading is strict: a missing or unexpected key is an error (``STRICT_ALLOW_MISSING`` lists the
exceptions, currently none, and a test asserts that list).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from salma.config import SalmaConfig
from salma.model import SalmaModel

logger = logging.getLogger(__name__)

CONFIG_FILE = "salma_config.json"
MLLM_DIR = "mllm"
WEIGHTS_FILE = "salma.safetensors"
STRICT_ALLOW_MISSING: frozenset[str] = frozenset()


def _non_mllm_state(model: SalmaModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("mllm.")}


def save_weights(model: torch.nn.Module, path: str | Path, *, keys: set[str] | None = None) -> None:
    """Write a state dict (optionally only ``keys``) as safetensors; tied tensors are cloned."""
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items() if keys is None or k in keys}
    tmp = Path(str(path) + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def load_weights(model: torch.nn.Module, path: str | Path, *, expected: set[str] | None = None) -> None:
    """Load safetensors strictly: the file must hold exactly ``expected`` keys (default: all of
    the model's), with matching shapes."""
    state = load_file(str(path))
    own = model.state_dict()
    check_weights(state, own, expected=set(own) if expected is None else expected, source=str(path))
    model.load_state_dict(state, strict=False)


def check_weights(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], *, expected: set[str], source: str) -> None:
    """Raise ValueError unless ``state`` holds exactly the ``expected`` keys (minus
    ``STRICT_ALLOW_MISSING``), each with the shape the model (``own``) has."""
    missing = sorted(expected - set(state) - STRICT_ALLOW_MISSING)
    unexpected = sorted(set(state) - set(own))
    unexpected += sorted(k for k in set(state) & set(own) if k not in expected)
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not match the model: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}")


def export_model(model: SalmaModel, out_dir: str | Path) -> Path:
    """Merge LoRA and write the self-contained folder described in the module docstring."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged = model.mllm.merge_lora() if model.mllm.has_lora else 0
    logger.info("merged %d LoRA layers", merged)
    mllm_dir = out / MLLM_DIR
    model.mllm.model.save_pretrained(mllm_dir, safe_serialization=True)
    model.tokenizer.save_pretrained(mllm_dir)
    save_file(_non_mllm_state(model), str(out / WEIGHTS_FILE))
    config: SalmaConfig = model.config.model_copy(deep=True)
    config.lora.enabled = False
    config.mllm.path = MLLM_DIR
    config.mllm.tokenizer = MLLM_DIR
    config.sam.checkpoint = None
    (out / CONFIG_FILE).write_text(json.dumps(config.model_dump(mode="json"), indent=2))
    return out


def load_exported(folder: str | Path, *, device: str = "cpu") -> SalmaModel:
    """Rebuild the model from an exported folder and load every weight strictly."""
    from salma.builder import build_salma

    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not an exported SALMA model: {CONFIG_FILE} is missing")
    raw = json.loads(config_path.read_text())
    raw["mllm"]["path"] = str(folder / raw["mllm"]["path"])
    raw["mllm"]["tokenizer"] = str(folder / raw["mllm"]["tokenizer"])
    config = SalmaConfig.model_validate(raw)
    model = build_salma(config)  # loads the MLLM strictly (see build_internvl)
    expected = {k for k in model.state_dict() if not k.startswith("mllm.")}
    load_weights(model, folder / WEIGHTS_FILE, expected=expected)
    return model.to(device)
