"""What a checkpoint folder holds, read without loading a weight: the layout its ``config.json``
declares, and the name, shape and dtype of every stored tensor (safetensors headers only).

The builder and the converters call this first, so that a folder in the wrong layout is refused
before a byte of model memory is allocated. Everything read here is untrusted: a missing or
malformed file, a shard index that names a file outside its folder, a tensor listed twice or
stored where the index does not say, all raise ``CheckpointLayoutError`` naming the file.
Pickle checkpoints (``.bin``, ``.pt``) are never read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CONFIG_FILE = "config.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"

# safetensors header dtype names → torch dtypes (the ones checkpoints use).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointLayoutError(ValueError):
    """A checkpoint folder is not in the layout the caller needs, or its files are malformed."""


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: str  # the safetensors file (a plain name inside the folder) that stores it

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


# The released layouts that need ``salma convert`` before SALMA can use them: the architecture
# names the remote-code ``config.json`` files declare (OpenGVLab's ``InternVLChatModel``,
# ByteDance's ``Sa2VAChatModel``), their ``model_type`` values, and the command that converts each.
REMOTE_CODE_LAYOUTS: dict[str, tuple[set[str], set[str], str]] = {
    "internvl": ({"InternVLChatModel"}, {"internvl_chat"}, "salma convert internvl"),
    "sa2va": ({"Sa2VAChatModel"}, {"sa2va_chat"}, "salma convert sa2va"),
}


def read_json_file(path: Path) -> Any:
    """Parse a JSON file, with an error that names it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CheckpointLayoutError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointLayoutError(f"{path}: not valid JSON ({err})") from None


def read_config(folder: str | Path) -> dict[str, Any]:
    """The folder's ``config.json`` as a dict (an error if it is missing or not a JSON object)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointLayoutError(f"{folder}: no {CONFIG_FILE}; not a model folder")
    raw = read_json_file(path)
    if not isinstance(raw, dict):
        raise CheckpointLayoutError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def release_layout(config: dict[str, Any]) -> str | None:
    """``"internvl"`` or ``"sa2va"`` for a released remote-code config, else None."""
    architectures = set(config.get("architectures") or [])
    for name, (archs, _, _) in REMOTE_CODE_LAYOUTS.items():
        if architectures & archs:
            return name
    for name, (_, types, _) in REMOTE_CODE_LAYOUTS.items():
        if config.get("model_type") in types:
            return name
    return None


def require_native_internvl(folder: str | Path) -> dict[str, Any]:
    """Refuse anything but a transformers-native InternVL folder; returns its config dict.

    A released remote-code InternVL2.5 or Sa2VA folder is refused with the ``salma convert``
    command that makes it usable: transformers' native class would otherwise read its
    ``config.json`` (which has ``llm_config``, not ``text_config``), fall back to a default
    4096-wide language model, and allocate tens of GiB before any weight is checked.
    """
    config = read_config(folder)
    layout = release_layout(config)
    if layout is not None:
        command = REMOTE_CODE_LAYOUTS[layout][2]
        kind = "Sa2VA" if layout == "sa2va" else "InternVL"
        raise CheckpointLayoutError(
            f"{folder} is a released {kind} checkpoint in its remote-code layout "
            f"(architectures={config.get('architectures')}); SALMA never runs remote code. Convert it first:\n"
            f"    {command} {folder} --out <new folder>"
        )
    if config.get("model_type") != "internvl" or not isinstance(config.get("text_config"), dict):
        raise CheckpointLayoutError(
            f"{Path(folder) / CONFIG_FILE}: model_type={config.get('model_type')!r} with "
            f"{'a' if isinstance(config.get('text_config'), dict) else 'no'} text_config; expected a "
            "transformers-native InternVL folder (model_type 'internvl' with text_config and vision_config)"
        )
    if "auto_map" in config:
        raise CheckpointLayoutError(
            f"{Path(folder) / CONFIG_FILE}: declares auto_map (remote code); SALMA loads native classes only"
        )
    return config


def _plain_file_name(folder: Path, name: Any, source: Path) -> str:
    """A shard name from an index must be a plain file name inside the folder."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise CheckpointLayoutError(f"{source}: shard name {name!r} is not a plain file name in {folder}")
    if not name.endswith(".safetensors"):
        raise CheckpointLayoutError(f"{source}: shard {name!r} is not a .safetensors file")
    return name


def _read_header(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    from safetensors import SafetensorError, safe_open

    specs = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                piece = f.get_slice(key)
                dtype_name = piece.get_dtype()
                if dtype_name not in SAFETENSORS_DTYPES:
                    raise CheckpointLayoutError(f"{path}: tensor {key} has unsupported dtype {dtype_name}")
                specs[key] = (tuple(int(d) for d in piece.get_shape()), SAFETENSORS_DTYPES[dtype_name])
    except (SafetensorError, OSError) as err:
        raise CheckpointLayoutError(f"{path}: not a readable safetensors file ({err})") from None
    return specs


def stored_tensors(folder: str | Path) -> dict[str, TensorSpec]:
    """Name → shape, dtype and file of every tensor in a folder's safetensors weights, from the
    headers alone (``model.safetensors``, or the shards a ``model.safetensors.index.json``
    names). Pickle weights are refused."""
    folder = Path(folder)
    index_path = folder / WEIGHTS_INDEX_FILE
    if index_path.is_file():
        index = read_json_file(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointLayoutError(f"{index_path}: no weight_map object")
        files = sorted({_plain_file_name(folder, name, index_path) for name in weight_map.values()})
    elif (folder / SINGLE_WEIGHTS_FILE).is_file():
        weight_map, files = None, [SINGLE_WEIGHTS_FILE]
    else:
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        hint = f" (found {pickles[:3]}: pickle weights are not read; use the safetensors release)" if pickles else ""
        raise CheckpointLayoutError(f"{folder}: no {SINGLE_WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}{hint}")
    specs: dict[str, TensorSpec] = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise CheckpointLayoutError(f"{index_path}: names shard {name}, which is missing")
        for key, (shape, dtype) in _read_header(path).items():
            if key in specs:
                raise CheckpointLayoutError(f"{path}: tensor {key} is also stored in {specs[key].file}")
            if weight_map is not None and weight_map.get(key) != name:
                raise CheckpointLayoutError(
                    f"{path}: stores {key}, which {WEIGHTS_INDEX_FILE} places in {weight_map.get(key)!r}"
                )
            specs[key] = TensorSpec(shape=shape, dtype=dtype, file=name)
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(specs))
        if absent:
            raise CheckpointLayoutError(f"{index_path}: {len(absent)} tensors listed but not stored, e.g. {absent[:3]}")
    return specs
