"""Convert a released InternVL2.5 folder (remote-code ``InternVLChatModel``) into transformers'
native InternVL layout, by an explicit key mapping and a field-by-field config translation.

    salma convert internvl checkpoints/InternVL2_5-1B --out checkpoints/InternVL2_5-1B-hf

Nothing from the source folder is executed (only ``config.json``, the tokenizer files and the
safetensors are read) and nothing is downloaded. The conversion is planned from the files'
headers before a tensor is read: every source tensor must map to a target, every tensor of the
native architecture the translated config describes must be produced exactly once with its
shape, and any gap is an error naming the tensors. It then streams: one source shard is read at
a time and written as one output shard (peak memory near the largest shard, not the model).
Dtypes are kept (bf16 in, bf16 out).

The mapping (names from OpenGVLab/InternVL ``internvl_chat/internvl/model/``):

- InternViT ``vision_model.*`` → ``vision_tower.*``: the fused ``attn.qkv`` splits into
  ``attention.{q,k,v}_proj`` (rows in q, k, v order, as ``InternAttention`` reshapes them),
  ``attn.proj`` → ``attention.projection_layer``, ``ls1/ls2`` → ``lambda_1/lambda_2``,
  ``norm1/norm2`` → ``layernorm_before/after``, ``class_embedding`` → ``cls_token``,
  ``patch_embedding`` → ``patch_embeddings.projection``, ``position_embedding`` → ``position_embeddings``.
- ``mlp1.{0,1,3}`` → ``multi_modal_projector.{layer_norm,linear_1,linear_2}``.
- Qwen2 / Llama language models keep their names (``language_model.model.*``,
  ``language_model.lm_head``); InternLM2 becomes Llama: ``tok_embeddings`` → ``embed_tokens``,
  the grouped ``attention.wqkv`` splits per key-value group into ``self_attn.{q,k,v}_proj`` (the
  layout ``InternLM2Attention`` unpacks), ``wo`` → ``o_proj``, ``feed_forward.w1/w3/w2`` →
  ``mlp.gate/up/down_proj``, ``attention_norm/ffn_norm`` → ``input/post_attention_layernorm``,
  ``output`` → ``lm_head``.
- A stored output head stays a separate head (``tie_word_embeddings: false``); a release
  without one is tied.

InternLM2-based releases (2B, 8B, 26B) ship a sentencepiece tokenizer that needs their remote
code; give ``tokenizer=`` a folder holding a transformers tokenizer for them (the converter
refuses to run the release's tokenizer code).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from salma.checkpoint_layout import (
    CONFIG_FILE,
    SINGLE_WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    CheckpointLayoutError,
    TensorSpec,
    read_config,
    read_json_file,
    release_layout,
    stored_tensors,
)

logger = logging.getLogger(__name__)

IMG_CONTEXT = "<IMG_CONTEXT>"
# Tokenizer files copied as they are (JSON and text only; never code).
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
TOKENIZER_CONFIG = "tokenizer_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
# Language models whose tokenizers transformers provides (no remote code needed).
NATIVE_TEXT_MODELS = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama", "InternLM2ForCausalLM": "llama"}


class ConversionError(CheckpointLayoutError):
    """A release cannot be converted as it is; the message says which tensor, field or file."""


# ------------------------------------------------------------------------------------- mapping
@dataclass(frozen=True)
class Target:
    """One tensor the conversion writes: ``name`` (in its output's own naming), taken from
    ``source`` by ``part`` (None: the whole tensor; else rows of the source's first dimension)."""

    output: str  # which output file group ("mllm", or another the caller adds)
    name: str
    source: str
    shape: tuple[int, ...]
    part: tuple[str, int, int] | None = None  # ("rows", start, stop) or ("wqkv", which, group size)

    def take(self, tensor: torch.Tensor, wqkv: Callable[[torch.Tensor, int, int], torch.Tensor]) -> torch.Tensor:
        if self.part is None:
            return tensor
        kind, a, b = self.part
        if kind == "rows":
            return tensor[a:b]
        return wqkv(tensor, a, b)


_VISION_RULES = (
    (r"vision_model\.embeddings\.class_embedding", "vision_tower.embeddings.cls_token"),
    (r"vision_model\.embeddings\.patch_embedding\.(weight|bias)", r"vision_tower.embeddings.patch_embeddings.projection.\1"),
    (r"vision_model\.embeddings\.position_embedding", "vision_tower.embeddings.position_embeddings"),
    (r"vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.(weight|bias)", r"vision_tower.encoder.layer.\1.attention.projection_layer.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.attn\.(q_norm|k_norm)\.weight", r"vision_tower.encoder.layer.\1.attention.\2.weight"),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision_tower.encoder.layer.\1.mlp.\2.\3"),
    (r"vision_model\.encoder\.layers\.(\d+)\.norm1\.(weight|bias)", r"vision_tower.encoder.layer.\1.layernorm_before.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.norm2\.(weight|bias)", r"vision_tower.encoder.layer.\1.layernorm_after.\2"),
    (r"vision_model\.encoder\.layers\.(\d+)\.ls1", r"vision_tower.encoder.layer.\1.lambda_1"),
    (r"vision_model\.encoder\.layers\.(\d+)\.ls2", r"vision_tower.encoder.layer.\1.lambda_2"),
    (r"mlp1\.0\.(weight|bias)", r"multi_modal_projector.layer_norm.\1"),
    (r"mlp1\.1\.(weight|bias)", r"multi_modal_projector.linear_1.\1"),
    (r"mlp1\.3\.(weight|bias)", r"multi_modal_projector.linear_2.\1"),
)  # fmt: skip
_VISION_QKV = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)")
_SAME_NAMES_RULES = (
    (r"(language_model\.model\..+)", r"\1"),
    (r"language_model\.lm_head\.weight", "language_model.lm_head.weight"),
)
_INTERNLM2_RULES = (
    (r"language_model\.model\.tok_embeddings\.weight", "language_model.model.embed_tokens.weight"),
    (r"language_model\.model\.layers\.(\d+)\.attention\.wo\.(weight|bias)", r"language_model.model.layers.\1.self_attn.o_proj.\2"),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w1\.weight", r"language_model.model.layers.\1.mlp.gate_proj.weight"),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w3\.weight", r"language_model.model.layers.\1.mlp.up_proj.weight"),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w2\.weight", r"language_model.model.layers.\1.mlp.down_proj.weight"),
    (r"language_model\.model\.layers\.(\d+)\.attention_norm\.weight", r"language_model.model.layers.\1.input_layernorm.weight"),
    (r"language_model\.model\.layers\.(\d+)\.ffn_norm\.weight", r"language_model.model.layers.\1.post_attention_layernorm.weight"),
    (r"language_model\.model\.norm\.weight", "language_model.model.norm.weight"),
    (r"language_model\.output\.weight", "language_model.lm_head.weight"),
)  # fmt: skip
_INTERNLM2_WQKV = re.compile(r"language_model\.model\.layers\.(\d+)\.attention\.wqkv\.(weight|bias)")
OUTPUT_HEADS = ("language_model.lm_head.weight", "language_model.output.weight")


@dataclass(frozen=True)
class TextGeometry:
    heads: int
    kv_heads: int
    head_dim: int


def _rename(name: str, rules) -> str | None:
    for pattern, replacement in rules:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def internvl_targets(name: str, shape: tuple[int, ...], *, llm: str, text: TextGeometry) -> list[Target] | None:
    """The native tensors one released InternVL tensor becomes (None if no rule maps it)."""
    if match := _VISION_QKV.fullmatch(name):
        layer, kind = match.groups()
        width = shape[0] // 3
        return [
            Target("mllm", f"vision_tower.encoder.layer.{layer}.attention.{proj}.{kind}", name,
                   (width, *shape[1:]), ("rows", i * width, (i + 1) * width))
            for i, proj in enumerate(("q_proj", "k_proj", "v_proj"))
        ]  # fmt: skip
    renamed = _rename(name, _VISION_RULES)
    if renamed is not None:
        return [Target("mllm", renamed, name, shape)]
    if llm == "internlm2":
        if match := _INTERNLM2_WQKV.fullmatch(name):
            layer, kind = match.groups()
            groups = text.heads // text.kv_heads
            sizes = {"q_proj": text.heads * text.head_dim, "k_proj": text.kv_heads * text.head_dim,
                     "v_proj": text.kv_heads * text.head_dim}  # fmt: skip
            return [
                Target("mllm", f"language_model.model.layers.{layer}.self_attn.{proj}.{kind}", name,
                       (sizes[proj], *shape[1:]), ("wqkv", which, groups))
                for which, proj in enumerate(("q_proj", "k_proj", "v_proj"))
            ]  # fmt: skip
        renamed = _rename(name, _INTERNLM2_RULES)
    else:
        renamed = _rename(name, _SAME_NAMES_RULES)
    return None if renamed is None else [Target("mllm", renamed, name, shape)]


def split_wqkv(tensor: torch.Tensor, which: int, groups: int, head_dim: int) -> torch.Tensor:
    """InternLM2's fused ``wqkv`` rows are ``(kv_heads, groups + 2, head_dim)``: per key-value
    group, its ``groups`` query heads, then its key head, then its value head
    (``InternLM2Attention.forward``). ``which``: 0 queries, 1 keys, 2 values."""
    rows = tensor.reshape(-1, groups + 2, head_dim, *tensor.shape[1:])  # (kv, g + 2, hd, ...)
    match which:
        case 0:
            part = rows[:, :groups]
        case 1:
            part = rows[:, groups : groups + 1]
        case _:
            part = rows[:, groups + 1 :]
    return part.reshape(-1, *tensor.shape[1:])


# -------------------------------------------------------------------------------------- config
def _require(config: dict, key: str, where: str) -> Any:
    if key not in config:
        raise ConversionError(f"{where}: the field {key!r} is missing")
    return config[key]


def _rope_parameters(llm: dict) -> dict:
    theta = float(llm.get("rope_theta", 10000.0))
    scaling = llm.get("rope_scaling")
    if not scaling:
        return {"rope_type": "default", "rope_theta": theta}
    if not isinstance(scaling, dict):
        raise ConversionError(f"llm_config.rope_scaling={scaling!r} is not an object")
    kind = scaling.get("rope_type") or scaling.get("type")
    params = {k: v for k, v in scaling.items() if k not in ("type", "rope_type")}
    return {"rope_type": kind, **params, "rope_theta": theta}


def native_text_config(llm: dict, *, tied: bool, where: str) -> dict:
    """``llm_config`` of a release → the native ``text_config`` (Qwen2 stays Qwen2; InternLM2
    and Llama become Llama)."""
    arch = (llm.get("architectures") or [None])[0]
    if arch not in NATIVE_TEXT_MODELS:
        raise ConversionError(
            f"{where}: llm_config.architectures={llm.get('architectures')}; supported: {sorted(NATIVE_TEXT_MODELS)}"
        )
    common = {
        "hidden_size": _require(llm, "hidden_size", where),
        "intermediate_size": _require(llm, "intermediate_size", where),
        "num_hidden_layers": _require(llm, "num_hidden_layers", where),
        "num_attention_heads": _require(llm, "num_attention_heads", where),
        "num_key_value_heads": llm.get("num_key_value_heads", llm["num_attention_heads"]),
        "vocab_size": _require(llm, "vocab_size", where),
        "max_position_embeddings": llm.get("max_position_embeddings", 32768),
        "rms_norm_eps": llm.get("rms_norm_eps", 1e-6),
        "hidden_act": llm.get("hidden_act", "silu"),
        "rope_parameters": _rope_parameters(llm),
        "tie_word_embeddings": tied,
        "bos_token_id": llm.get("bos_token_id"),
        "eos_token_id": llm.get("eos_token_id"),
        "pad_token_id": llm.get("pad_token_id"),
        "attention_dropout": 0.0,
        "use_cache": True,
    }
    if arch == "Qwen2ForCausalLM":
        return {
            "model_type": "qwen2",
            **common,
            "sliding_window": llm.get("sliding_window"),
            "use_sliding_window": llm.get("use_sliding_window", False),
            "max_window_layers": llm.get("max_window_layers", common["num_hidden_layers"]),
        }
    # InternLM2's ``bias`` covers wqkv and wo, as Llama's ``attention_bias`` covers q/k/v/o.
    bias = llm.get("bias", True) if arch == "InternLM2ForCausalLM" else llm.get("attention_bias", False)
    return {"model_type": "llama", **common, "attention_bias": bool(bias), "mlp_bias": bool(llm.get("mlp_bias", False))}


def native_config(release: dict, *, image_token_id: int, tied: bool, dtype: str, where: str) -> dict:
    """A release's ``InternVLChatConfig`` → the native ``InternVLConfig`` dict, field by field."""
    vision = _require(release, "vision_config", where)
    llm = _require(release, "llm_config", where)
    if release.get("ps_version", "v1") != "v2":
        raise ConversionError(
            f"{where}: ps_version={release.get('ps_version', 'v1')!r}; the native class implements the v2 "
            "pixel shuffle only (v1 transposes the image)"
        )
    image_size = release.get("force_image_size") or vision.get("image_size", 224)
    patch = vision.get("patch_size", 14)
    ratio = release.get("downsample_ratio", 0.5)
    qk_norm = bool(vision.get("qk_normalization", True))
    if qk_norm and vision.get("layer_norm_eps", 1e-6) != 1e-6:
        raise ConversionError(f"{where}: qk_normalization with layer_norm_eps != 1e-6 has no native equivalent")
    return {
        "architectures": ["InternVLForConditionalGeneration"],
        "model_type": "internvl",
        "dtype": dtype,
        "downsample_ratio": ratio,
        "image_seq_length": int((image_size // patch) ** 2 * ratio**2),
        "image_token_id": image_token_id,
        "projector_hidden_act": "gelu",  # mlp1.2 is nn.GELU()
        "vision_feature_layer": release.get("select_layer", -1),
        "vision_feature_select_strategy": "default",  # drops the class token, as extract_feature does
        "tie_word_embeddings": tied,
        "text_config": native_text_config(llm, tied=tied, where=where),
        "vision_config": {
            "model_type": "internvl_vision",
            "hidden_size": _require(vision, "hidden_size", where),
            "num_hidden_layers": _require(vision, "num_hidden_layers", where),
            "num_attention_heads": _require(vision, "num_attention_heads", where),
            "intermediate_size": _require(vision, "intermediate_size", where),
            "hidden_act": vision.get("hidden_act", "gelu"),
            "layer_norm_eps": vision.get("layer_norm_eps", 1e-6),
            "norm_type": vision.get("norm_type", "rms_norm"),
            "use_qk_norm": qk_norm,
            "attention_bias": bool(vision.get("qkv_bias", False)),
            "image_size": [image_size, image_size],
            "patch_size": [patch, patch],
            "num_channels": vision.get("num_channels", 3),
            "attention_dropout": 0.0,
            "projection_dropout": 0.0,
            "hidden_dropout_prob": 0.0,
            "use_absolute_position_embeddings": True,
            "use_mean_pooling": True,  # InternViT has no final norm
            "use_mask_token": False,
        },
    }


def preprocessor_config(release: dict) -> dict:
    """The release's image tiling (dynamic 448-px tiles plus thumbnail), in the fields of the
    native ``GotOcr2ImageProcessor`` configuration, so the folder records it."""
    size = release.get("force_image_size") or release["vision_config"].get("image_size", 224)
    return {
        "image_processor_type": "GotOcr2ImageProcessorFast",
        "crop_to_patches": bool(release.get("dynamic_image_size", False)),
        "min_patches": release.get("min_dynamic_patch", 1),
        "max_patches": release.get("max_dynamic_patch", 6),
        "size": {"height": size, "width": size},
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "do_convert_rgb": True,
    }


# ------------------------------------------------------------------------------------ tokenizer
def copy_tokenizer(source: Path, out: Path, *, tokenizer: Path | None = None) -> None:
    """Copy the tokenizer files (and chat template) of ``tokenizer`` (default: the release
    itself), JSON and text only; a ``tokenizer_config.json`` that points to remote code is
    refused unless its class is one transformers provides (then the pointer is dropped)."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    origin = tokenizer or source
    config_path = origin / TOKENIZER_CONFIG
    if not config_path.is_file():
        raise ConversionError(f"{origin}: no {TOKENIZER_CONFIG}")
    tokenizer_config = read_json_file(config_path)
    if not isinstance(tokenizer_config, dict):
        raise ConversionError(f"{config_path}: expected a JSON object")
    class_name = tokenizer_config.get("tokenizer_class")
    if tokenizer_class_from_name(str(class_name)) is None or (class_name or "").startswith("InternLM2"):
        raise ConversionError(
            f"{config_path}: tokenizer_class={class_name!r} needs the release's own code, which is never run; "
            "pass a folder with a transformers tokenizer for this model as `--tokenizer DIR`"
        )
    tokenizer_config.pop("auto_map", None)
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (origin / name).is_file():
            shutil.copyfile(origin / name, out / name)
    (out / TOKENIZER_CONFIG).write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))


def tokenizer_image_token_id(folder: Path) -> int:
    """The id of ``<IMG_CONTEXT>`` in the (copied) tokenizer, loaded without remote code."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    if token_id is None or token_id == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(token_id) != IMG_CONTEXT:
        raise ConversionError(f"{folder}: the tokenizer has no {IMG_CONTEXT} token; it does not belong to an InternVL release")
    return int(token_id)


# ------------------------------------------------------------------------------------ streaming
@dataclass
class ConversionSummary:
    """What a conversion read and wrote; ``lines()`` is what the CLI prints."""

    source: str
    destination: str
    source_tensors: int = 0
    source_parameters: int = 0
    written_tensors: int = 0
    written_parameters: int = 0
    dtypes: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)
    outputs: dict[str, int] = field(default_factory=dict)  # output file → bytes
    largest_source_shard_bytes: int = 0
    output_head: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        dtypes = ", ".join(f"{n} {d}" for d, n in sorted(self.dtypes.items()))
        splits = ", ".join(f"{n} {what}" for what, n in sorted(self.splits.items())) or "none"
        return [
            f"converted {self.source} -> {self.destination} in {self.seconds:.1f} s",
            f"  read    {self.source_tensors} tensors, {self.source_parameters:,} parameters",
            f"  wrote   {self.written_tensors} tensors, {self.written_parameters:,} parameters ({dtypes}), "
            f"{len(self.outputs)} files, {sum(self.outputs.values()) / 2**20:.1f} MiB",
            f"  split   {splits}",
            "  checked every source tensor mapped, every target written once, shapes and dtypes kept",
            f"  output head: {self.output_head}",
            *[f"  {note}" for note in self.notes],
        ]


def plan_targets(
    stored: dict[str, TensorSpec],
    mapper: Callable[[str, tuple[int, ...]], list[Target] | None],
    *,
    source: str,
) -> list[Target]:
    """Map every stored tensor; an unmapped tensor is an error (listed)."""
    targets, unmapped = [], []
    for name, spec in stored.items():
        mapped = mapper(name, spec.shape)
        if not mapped:
            unmapped.append(name)
        else:
            targets += mapped
    if unmapped:
        raise ConversionError(f"{source}: {len(unmapped)} tensors have no mapping, e.g. {sorted(unmapped)[:5]}")
    return targets


def check_targets(targets: list[Target], expected: dict[str, dict[str, tuple[int, ...]]], *, source: str) -> None:
    """Every expected tensor of every output produced exactly once with its shape, nothing else."""
    seen = Counter((t.output, t.name) for t in targets)
    twice = sorted(f"{o}:{n}" for (o, n), c in seen.items() if c > 1)
    produced = {(t.output, t.name): t for t in targets}
    missing = sorted(f"{o}:{n}" for o, names in expected.items() for n in names if (o, n) not in produced)
    extra = sorted(f"{o}:{n}" for (o, n) in produced if n not in expected.get(o, {}))
    wrong = sorted(
        f"{n} (from {t.source}): {t.shape} vs {expected[o][n]}"
        for (o, n), t in produced.items()
        if n in expected.get(o, {}) and tuple(t.shape) != tuple(expected[o][n])
    )
    if twice or missing or extra or wrong:
        raise ConversionError(
            f"{source}: the mapped tensors do not fit the target architecture: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(extra)} without a place (e.g. {extra[:3]}), {len(twice)} written twice "
            f"(e.g. {twice[:3]}), {len(wrong)} of another shape (e.g. {wrong[:2]})"
        )


def stream_convert(
    source: Path,
    stored: dict[str, TensorSpec],
    targets: list[Target],
    *,
    sharded_outputs: dict[str, Path],
    single_outputs: dict[str, Path] | None = None,
    wqkv: Callable[[torch.Tensor, int, int], torch.Tensor],
    summary: ConversionSummary,
) -> None:
    """Read the source shard by shard and write every target, keeping each tensor's dtype.

    ``sharded_outputs``: output name → folder that receives one safetensors shard per source
    shard (plus an index when there are several); ``single_outputs``: output name → one file
    written at the end (small parts, such as SAM-2 in a Sa2VA release).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    single_outputs = single_outputs or {}
    by_file: dict[str, list[Target]] = {}
    for target in targets:
        by_file.setdefault(stored[target.source].file, []).append(target)
    files = sorted({spec.file for spec in stored.values()})
    names = {
        file: SINGLE_WEIGHTS_FILE if len(files) == 1 else f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        for i, file in enumerate(files)
    }
    weight_maps: dict[str, dict[str, str]] = {out: {} for out in sharded_outputs}
    totals: dict[str, int] = Counter()
    held: dict[str, dict[str, torch.Tensor]] = {out: {} for out in single_outputs}
    for file in files:
        path = source / file
        summary.largest_source_shard_bytes = max(summary.largest_source_shard_bytes, path.stat().st_size)
        shard: dict[str, dict[str, torch.Tensor]] = {out: {} for out in sharded_outputs}
        with safe_open(str(path), framework="pt") as f:
            for target in by_file.get(file, []):
                tensor = f.get_tensor(target.source)
                piece = target.take(tensor, wqkv).contiguous()
                if piece.dtype != stored[target.source].dtype or tuple(piece.shape) != target.shape:
                    raise ConversionError(f"{path}: {target.source} → {target.name} changed dtype or shape")
                summary.written_tensors += 1
                summary.written_parameters += piece.numel()
                summary.dtypes[str(piece.dtype).removeprefix("torch.")] += 1
                if target.output in held:
                    held[target.output][target.name] = piece.clone()
                else:
                    shard[target.output][target.name] = piece
                    weight_maps[target.output][target.name] = names[file]
                    totals[target.output] += piece.numel() * piece.element_size()
        for out, tensors in shard.items():
            if tensors:
                out_path = sharded_outputs[out] / names[file]
                save_file(tensors, str(out_path), metadata={"format": "pt"})
                summary.outputs[f"{out}/{names[file]}"] = out_path.stat().st_size
        del shard
    for out, folder in sharded_outputs.items():
        if len(files) > 1:
            index = {"metadata": {"total_size": totals[out]}, "weight_map": dict(sorted(weight_maps[out].items()))}
            (folder / WEIGHTS_INDEX_FILE).write_text(json.dumps(index, indent=2))
    for out, path in single_outputs.items():
        save_file(held[out], str(path), metadata={"format": "pt"})
        summary.outputs[f"{out}/{path.name}"] = path.stat().st_size


# ------------------------------------------------------------------------------------ InternVL
@dataclass(frozen=True)
class InternVLPlan:
    """Everything decided from the headers and configs, before a tensor is read."""

    release: dict
    native: dict
    targets: list[Target]
    text: TextGeometry
    llm: str  # "qwen2", "llama" or "internlm2" (the release's language model)
    tied: bool


def _llm_kind(release: dict, where: str) -> str:
    arch = (release.get("llm_config", {}).get("architectures") or [None])[0]
    kinds = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama", "InternLM2ForCausalLM": "internlm2"}
    if arch not in kinds:
        raise ConversionError(f"{where}: llm_config.architectures[0]={arch!r}; supported: {sorted(kinds)}")
    return kinds[arch]


def plan_internvl(
    release: dict, stored: dict[str, TensorSpec], *, image_token_id: int, where: str
) -> InternVLPlan:
    """Plan the conversion of the InternVL tensors in ``stored`` (all of them must be InternVL's)."""
    from transformers import InternVLConfig

    from salma.mllm import native_disk_name, native_state_shapes

    llm = _llm_kind(release, where)
    text_cfg = release["llm_config"]
    heads = text_cfg["num_attention_heads"]
    text = TextGeometry(heads=heads, kv_heads=text_cfg.get("num_key_value_heads", heads),
                        head_dim=text_cfg["hidden_size"] // heads)  # fmt: skip
    tied = not any(name in stored for name in OUTPUT_HEADS)
    dtypes = Counter(spec.dtype for spec in stored.values())
    dtype = str(dtypes.most_common(1)[0][0]).removeprefix("torch.")
    native = native_config(release, image_token_id=image_token_id, tied=tied, dtype=dtype, where=where)
    targets = plan_targets(stored, lambda n, s: internvl_targets(n, s, llm=llm, text=text), source=where)
    expected = {native_disk_name(k): v for k, v in native_state_shapes(InternVLConfig.from_dict(native)).items()}
    check_targets(targets, {"mllm": expected}, source=where)
    return InternVLPlan(release=release, native=native, targets=targets, text=text, llm=llm, tied=tied)


def write_native_folder(out: Path, plan: InternVLPlan) -> None:
    """The non-weight files of the native folder: config, tiling, tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(plan.native, indent=2) + "\n")
    (out / PREPROCESSOR_CONFIG).write_text(json.dumps(preprocessor_config(plan.release), indent=2) + "\n")


def release_image_token_id(source: Path, out: Path, *, tokenizer: Path | None) -> int:
    """Copy the tokenizer into ``out`` and return its ``<IMG_CONTEXT>`` id."""
    copy_tokenizer(source, out, tokenizer=tokenizer)
    return tokenizer_image_token_id(out)


_RELEASES = {"internvl": ("InternVLChatModel", "salma convert internvl"), "sa2va": ("Sa2VAChatModel", "salma convert sa2va")}


def open_release(source: Path, out: Path, layout: str) -> tuple[dict, str]:
    """The release's ``config.json`` (and its path, for messages), after checking that it is the
    ``layout`` the caller converts (the other one is pointed to its command) and that ``out`` is
    free."""
    release = read_config(source)
    where = str(source / CONFIG_FILE)
    found = release_layout(release)
    if found != layout:
        other = f"; a {_RELEASES[found][0]} release is converted with `{_RELEASES[found][1]}`" if found else ""
        raise ConversionError(
            f"{where}: architectures={release.get('architectures')}, model_type={release.get('model_type')!r}; "
            f"expected a released {_RELEASES[layout][0]} folder{other}"
        )
    check_destination(source, out)
    return release, where


def fresh_staging(out: Path) -> Path:
    """``<out>.partial``, emptied: the conversion is written there and renamed when complete."""
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def check_destination(source: Path, out: Path) -> None:
    if out.resolve() == source.resolve():
        raise ConversionError(f"--out {out} is the source folder; write the converted folder elsewhere")
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"--out {out} exists and is not empty; choose a new folder")


def convert_internvl(source: str | Path, out: str | Path, *, tokenizer: str | Path | None = None) -> ConversionSummary:
    """Convert a released InternVL2.5 folder into a native one at ``out`` (see the module
    docstring); returns the summary."""
    started = time.perf_counter()
    source, out = Path(source), Path(out)
    release, where = open_release(source, out, "internvl")
    stored = stored_tensors(source)
    staging = fresh_staging(out)
    image_token_id = release_image_token_id(source, staging, tokenizer=None if tokenizer is None else Path(tokenizer))
    plan = plan_internvl(release, stored, image_token_id=image_token_id, where=where)
    summary = describe_plan(source, out, stored, plan)
    write_native_folder(staging, plan)
    stream_convert(
        source, stored, plan.targets, sharded_outputs={"mllm": staging},
        wqkv=lambda t, which, groups: split_wqkv(t, which, groups, plan.text.head_dim), summary=summary,
    )  # fmt: skip
    finish_summary(summary, started)
    publish(staging, out)
    return summary


def publish(staging: Path, out: Path) -> None:
    """Move a finished conversion into place (a failed one leaves only ``<out>.partial``)."""
    if out.exists():
        out.rmdir()  # checked empty before the conversion started
    staging.rename(out)


def describe_plan(source: Path, out: Path, stored: dict[str, TensorSpec], plan: InternVLPlan) -> ConversionSummary:
    summary = ConversionSummary(source=str(source), destination=str(out))
    summary.source_tensors = len(stored)
    summary.source_parameters = sum(spec.numel for spec in stored.values())
    for target in plan.targets:
        if target.part is not None and target.name.endswith("q_proj.weight"):
            kind = "InternLM2 wqkv -> q/k/v" if target.part[0] == "wqkv" else "InternViT qkv -> q/k/v"
            summary.splits[kind] += 1
    summary.output_head = "tied to the input embeddings (the release stores none)" if plan.tied else (
        "separate (stored by the release; kept untied)"
    )
    if plan.llm == "internlm2":
        summary.notes.append("language model: InternLM2 converted to Llama")
    return summary


def finish_summary(summary: ConversionSummary, started: float) -> None:
    if summary.written_parameters != summary.source_parameters:
        raise ConversionError(
            f"{summary.source}: wrote {summary.written_parameters:,} parameters but read {summary.source_parameters:,}"
        )
    summary.seconds = time.perf_counter() - started
