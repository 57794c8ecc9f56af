"""Weights on disk: strict safetensors state dicts, the exported model folder, and ``init_from``.

An exported folder is self-contained, loads without the training code, and is laid out as a
hub model repository (upload it as it is; ``SalmaPredictor.from_pretrained`` takes the hub id):

    <out>/config.json           {"model_type": "salma", "dtype": ..., "salma": <the model config>}
                                (LoRA off: adapters are merged)
    <out>/README.md             the model card: provenance, the resolved config, evaluation scores
    <out>/mllm/                 the InternVL MLLM, transformers ``save_pretrained`` (safetensors),
                                with its tokenizer — loadable by transformers alone
    <out>/salma.safetensors     everything else: SAM-2, the [SEG]/expression projectors, MBA

Weights are written in the training dtype (``dtype``). Loading is strict: a missing or unexpected
key is an error (``STRICT_ALLOW_MISSING`` lists the exceptions, currently none, and a test asserts
that list). Folders written before ``config.json`` existed (``salma_config.json``) still load.

``init_from`` starts a model of possibly different configuration from an export: everything must
match except the parameters in ``INIT_FROM_MAY_START_FRESH``, which keep their initialisation
when the export lacks them (a Sa2VA baseline has no MBA), and which are logged by name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from salma.checkpoint_layout import CheckpointLayoutError
from salma.config import SalmaConfig, SamConfig
from salma.hub import resolve_model_folder
from salma.model import SalmaModel

if TYPE_CHECKING:  # salma.builder imports this module
    from salma.builder import BuiltSalma

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LEGACY_CONFIG_FILE = "salma_config.json"
MODEL_TYPE = "salma"
MLLM_DIR = "mllm"
WEIGHTS_FILE = "salma.safetensors"
MODEL_CARD_FILE = "README.md"
STRICT_ALLOW_MISSING: frozenset[str] = frozenset()
# Parameters a model started with ``init_from`` may lack in the export and initialise afresh:
# Mask-Biased Attention and the expression-token projector, which a Sa2VA baseline (MBA off)
# does not have. Everything else (MLLM, SAM-2, the [SEG] projector) must come from the export.
INIT_FROM_MAY_START_FRESH: tuple[str, ...] = ("mba.", "expression_projector.")


def _non_mllm_state(model: SalmaModel, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("mllm."):
            continue
        v = v.detach().cpu()
        state[k] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
    return state


def save_weights(model: torch.nn.Module, path: str | Path, *, keys: set[str] | None = None) -> None:
    """Write a state dict (optionally only ``keys``) as safetensors; tied tensors are cloned."""
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items() if keys is None or k in keys}
    tmp = Path(str(path) + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def load_weights(model: torch.nn.Module, path: str | Path, *, expected: set[str] | None = None) -> None:
    """Load safetensors strictly: the file must hold exactly ``expected`` keys (default: all of
    the model's), with matching shapes."""
    load_checked(model, read_safetensors(path), expected=expected, source=str(path))


def load_checked(
    model: torch.nn.Module, state: dict[str, torch.Tensor], *, expected: set[str] | None = None, source: str
) -> None:
    """Load ``state`` (read from ``source``) into ``model`` once ``check_weights`` passes."""
    own = model.state_dict()
    check_weights(state, own, expected=set(own) if expected is None else expected, source=source)
    model.load_state_dict(state, strict=False)


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a missing, truncated or malformed file raises
    ``CheckpointLayoutError`` naming it."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointLayoutError(f"{path}: the weights file is missing") from None
    except (OSError, SafetensorError) as err:
        raise CheckpointLayoutError(f"{path}: not a readable safetensors file ({err})") from None


def check_weights(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], *, expected: set[str], source: str) -> None:
    """Raise ``CheckpointLayoutError`` (a ValueError) unless ``state`` holds exactly the
    ``expected`` keys (minus ``STRICT_ALLOW_MISSING``), each with the shape the model (``own``)
    has."""
    missing = sorted(expected - set(state) - STRICT_ALLOW_MISSING)
    unexpected = sorted(set(state) - set(own))
    unexpected += sorted(k for k in set(state) & set(own) if k not in expected)
    if missing or unexpected:
        raise CheckpointLayoutError(
            f"{source}: weights do not match the model: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise CheckpointLayoutError(f"{source}: {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}")


def export_config(model_config: SalmaConfig) -> SalmaConfig:
    """The config an export carries: LoRA merged, weights in the folder itself."""
    config = model_config.model_copy(deep=True)
    config.lora.enabled = False
    config.init_from = None
    config.mllm.path = MLLM_DIR
    config.mllm.tokenizer = MLLM_DIR
    config.sam.checkpoint = None
    return config


def write_export_config(out: Path, config: SalmaConfig, *, dtype: torch.dtype) -> None:
    document = {
        "model_type": MODEL_TYPE,
        "dtype": str(dtype).removeprefix("torch."),
        "salma": config.model_dump(mode="json"),
    }
    (out / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")


def export_model(
    built: BuiltSalma,
    out_dir: str | Path,
    *,
    dtype: torch.dtype | None = None,
    scores: dict[str, float] | None = None,
    source: str | None = None,
) -> Path:
    """Merge LoRA and write the self-contained folder described in the module docstring: the
    model's weights, the tokenizer it was built with and its config (``export_config``), all
    from ``built`` (``build_salma``, ``load_exported``).

    ``dtype``: the dtype of the written weights (the training dtype; default: the parameters'
    own). ``scores`` (e.g. ``{"eval/refcoco_val/ciou": 73.2}``) and ``source`` (what was
    exported) go into the model card.
    """
    from salma.model_card import write_model_card

    model = built.model
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged = model.mllm.merge_lora() if model.mllm.has_lora else 0
    logger.info("merged %d LoRA layers", merged)
    dtype = dtype or next(model.parameters()).dtype
    mllm_dir = out / MLLM_DIR
    _save_mllm(model, mllm_dir, dtype)
    built.tokenizer.save_pretrained(mllm_dir)
    save_file(_non_mllm_state(model, dtype), str(out / WEIGHTS_FILE))
    config = export_config(built.config)
    write_export_config(out, config, dtype=dtype)
    write_model_card(out / MODEL_CARD_FILE, config=config, dtype=dtype, scores=scores or {}, source=source)
    return out


def _save_mllm(model: SalmaModel, mllm_dir: Path, dtype: torch.dtype) -> None:
    """``save_pretrained`` of the InternVL model with its weights in ``dtype``; the model in
    memory is left as it is. A tied output head is not written (it is the input embedding), a
    separate one is."""
    from salma.mllm import OUTPUT_HEAD

    internvl = model.mllm.model
    state = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach())
        for k, v in internvl.state_dict().items()
    }
    if internvl.config.tie_word_embeddings:
        state.pop(OUTPUT_HEAD, None)
    internvl.save_pretrained(mllm_dir, state_dict=state, safe_serialization=True)
    # config.json records the dtype of the stored weights.
    config_path = mllm_dir / "config.json"
    document = json.loads(config_path.read_text())
    document["dtype"] = str(dtype).removeprefix("torch.")
    config_path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def read_export_config(folder: str | Path) -> SalmaConfig:
    """The model config of an exported folder, validated; the paths it names must be the
    folder's own ``mllm`` subfolder (an export never points outside itself)."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if path.is_file():
        document = _read_json(path)
        if not isinstance(document, dict) or document.get("model_type") != MODEL_TYPE:
            kind = document.get("model_type") if isinstance(document, dict) else None
            raise CheckpointLayoutError(
                f"{path}: model_type={kind!r}, not an exported SALMA model; a released InternVL or Sa2VA "
                "folder is converted with `salma convert internvl|sa2va`"
            )
        raw = document.get("salma")
    elif (folder / LEGACY_CONFIG_FILE).is_file():
        path = folder / LEGACY_CONFIG_FILE
        raw = _read_json(path)
    else:
        raise FileNotFoundError(f"{folder} is not an exported SALMA model: {CONFIG_FILE} is missing")
    if not isinstance(raw, dict):
        raise CheckpointLayoutError(f"{path}: the model config is not a JSON object")
    try:
        config = SalmaConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in err.errors()[:3])
        raise CheckpointLayoutError(
            f"{path}: invalid model config ({problems}); if another version of SALMA wrote this export, "
            "export its checkpoint again with this one (salma export)"
        ) from None
    if config.mllm.path != MLLM_DIR or config.mllm.tokenizer != MLLM_DIR:
        raise CheckpointLayoutError(
            f"{path}: mllm.path / mllm.tokenizer must be {MLLM_DIR!r} (the folder's own MLLM), got "
            f"{config.mllm.path!r} / {config.mllm.tokenizer!r}"
        )
    if config.sam.checkpoint is not None or config.init_from is not None:
        raise CheckpointLayoutError(f"{path}: an export carries its own weights; sam.checkpoint and init_from must be null")
    return config


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointLayoutError(f"{path}: not a readable JSON file ({err})") from None


def load_exported(folder: str | Path, *, device: str = "cpu") -> BuiltSalma:
    """Rebuild the model from an exported folder and load every weight strictly; with the
    folder's tokenizer and its config (whose ``mllm`` paths name the folder's own)."""
    from salma.builder import build_salma

    folder = Path(folder)
    config = read_export_config(folder)
    config.mllm.path = str(folder / MLLM_DIR)
    config.mllm.tokenizer = str(folder / MLLM_DIR)
    weights = folder / WEIGHTS_FILE
    state = read_safetensors(weights)  # a missing or damaged file fails before anything is built
    built = build_salma(config)  # loads the MLLM strictly (see build_internvl)
    expected = {k for k in built.model.state_dict() if not k.startswith("mllm.")}
    load_checked(built.model, state, expected=expected, source=str(weights))
    built.model.to(device)
    return built


# ------------------------------------------------------------------------------------ init_from
def init_from_folder(name_or_path: str | Path) -> Path:
    """The local folder of an ``init_from`` export (a path or hub id), checked to be one."""
    folder = resolve_model_folder(name_or_path)
    read_export_config(folder)
    return folder


def load_init_weights(model: SalmaModel, folder: str | Path, *, sam: SamConfig) -> list[str]:
    """Load an export's non-MLLM weights (SAM-2, projectors, MBA) into ``model``, whose MLLM the
    builder already loaded from the export's ``mllm`` folder; ``sam`` is the SAM-2 config the
    model was built with, which must be the export's architecture. Strict, except that
    parameters in ``INIT_FROM_MAY_START_FRESH`` the export lacks keep their initialisation;
    returns their names (also logged)."""
    folder = Path(folder)
    exported = read_export_config(folder)
    ours = sam
    different = [
        f"sam.{name}: export {getattr(exported.sam, name)!r}, config {getattr(ours, name)!r}"
        for name in ("version", "hiera", "image_size", "overrides")
        if getattr(exported.sam, name) != getattr(ours, name)
    ]
    if different:
        raise CheckpointLayoutError(f"{folder}: init_from needs the export's SAM-2 architecture; " + "; ".join(different))
    state = read_safetensors(folder / WEIGHTS_FILE)
    own = model.state_dict()
    expected = {k for k in own if not k.startswith("mllm.")}
    fresh = sorted(k for k in expected - set(state) if k.startswith(INIT_FROM_MAY_START_FRESH))
    load_checked(model, state, expected=expected - set(fresh), source=str(folder / WEIGHTS_FILE))
    groups = {prefix: sum(k.startswith(prefix) for k in fresh) for prefix in INIT_FROM_MAY_START_FRESH}
    logger.info(
        "init_from %s: %d tensors loaded; %d start fresh (%s): %s",
        folder,
        len(state),
        len(fresh),
        ", ".join(f"{p}* x{n}" for p, n in groups.items() if n) or "none",
        fresh,
    )
    return fresh
