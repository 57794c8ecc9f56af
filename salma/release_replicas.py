"""Random-weight replicas of the released InternVL2.5 and Sa2VA folders, for tests and benchmarks.

A replica has the release's file names, ``config.json`` fields, tensor names and special-token
ids; only the sizes (chosen by the caller) and the values (random) differ. The layouts follow the
official remote-code modelling files: OpenGVLab/InternVL ``internvl_chat/internvl/model/``
(``InternVLChatModel``: ``vision_model`` = InternViT with a fused ``attn.qkv``, layer scales
``ls1``/``ls2``, ``norm1``/``norm2``; ``mlp1`` = LayerNorm, Linear, GELU, Linear; the language
model's own ``*ForCausalLM`` names under ``language_model``) and ByteDance's Sa2VA
``projects/llava_sam2/hf/models/`` (``Sa2VAChatModel``: the same plus ``grounding_encoder.sam2_model``
= SAM-2 with the ``gamma`` layer scales renamed ``g_weight`` by its conversion script, and
``text_hidden_fcs`` = Linear, ReLU, Linear). Tokenizers follow InternVL2.5-1B's (Qwen2.5's
byte-level BPE files with InternVL's added tokens; Sa2VA adds ``[SEG] <p> </p> <vp> </vp>``).
The tokenizer replica keeps every special-token id of the release but has no merges: text is
encoded byte by byte.

The replica folders also carry stand-ins for the release's remote-code ``.py`` files; importing
one would create ``REMOTE_CODE_MARKER`` next to it, which tests use to show that nothing
executes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

REMOTE_CODE_MARKER = "REMOTE_CODE_WAS_EXECUTED"
QWEN2_5_BASE_VOCAB = 151643  # byte-level BPE entries of Qwen2.5's vocab.json (ids 0..151642)
# Qwen2.5's added tokens, ids 151643..151664 (tokenizer_config.json of the Qwen2.5 / InternVL2.5-1B
# releases).
QWEN2_5_ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)  # fmt: skip
# InternVL's added tokens, ids 151665..151673 in InternVL2.5-1B (so <IMG_CONTEXT> = 151667).
INTERNVL_ADDED_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")
# Sa2VA's added tokens, in the order its training code adds them (ids 151674..151678 on 1B).
SA2VA_ADDED_TOKENS = ("[SEG]", "<p>", "</p>", "<vp>", "</vp>")
# InternLM2-based releases (InternVL2.5-2B/8B/26B): <IMG_CONTEXT> is 92546.
INTERNLM2_IMG_CONTEXT_ID = 92546


@dataclass(frozen=True)
class InternVLSizes:
    """The architecture of an InternVL2.5 release (the fields its ``config.json`` sets)."""

    llm: Literal["qwen2", "internlm2", "llama"] = "qwen2"
    # InternViT
    vision_hidden: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_intermediate: int = 4096
    image_size: int = 448
    patch_size: int = 14
    norm_type: Literal["layer_norm", "rms_norm"] = "layer_norm"
    qkv_bias: bool = True
    qk_normalization: bool = False
    # language model
    text_hidden: int = 896
    text_layers: int = 24
    text_heads: int = 14
    text_kv_heads: int = 2
    text_intermediate: int = 4864
    vocab_size: int = 151674
    tie_word_embeddings: bool = False
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    downsample_ratio: float = 0.5
    max_dynamic_patch: int = 12


# InternVL2.5-1B: InternViT-300M-448px-V2_5 + Qwen2.5-0.5B-Instruct with a separate output head
# (its config.json: llm_config.tie_word_embeddings false, vocab_size 151674).
INTERNVL2_5_1B = InternVLSizes()


def tiny_sizes(llm: Literal["qwen2", "internlm2", "llama"] = "qwen2", **changes) -> InternVLSizes:
    """A replica small enough for unit tests (the release's vocabulary size is kept: the
    special-token ids must be the release's)."""
    vocab = {"qwen2": 151674, "internlm2": 92553, "llama": 151674}[llm]
    base = InternVLSizes(
        llm=llm,
        vision_hidden=32,
        vision_layers=2,
        vision_heads=2,
        vision_intermediate=64,
        image_size=56,
        patch_size=14,
        text_hidden=32,
        text_layers=2,
        text_heads=4,
        text_kv_heads=2,
        text_intermediate=64,
        vocab_size=vocab,
        rms_norm_eps=1e-5 if llm == "internlm2" else 1e-6,
        max_dynamic_patch=2,
    )
    return replace(base, **changes)


# ------------------------------------------------------------------------------------- configs
def _vision_config(s: InternVLSizes) -> dict:
    return {
        "architectures": ["InternVisionModel"],
        "auto_map": {
            "AutoConfig": "configuration_intern_vit.InternVisionConfig",
            "AutoModel": "modeling_intern_vit.InternVisionModel",
        },
        "attention_dropout": 0.0,
        "drop_path_rate": 0.0,
        "dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": s.vision_hidden,
        "image_size": s.image_size,
        "initializer_factor": 0.1,
        "initializer_range": 1e-10,
        "intermediate_size": s.vision_intermediate,
        "layer_norm_eps": 1e-6,
        "model_type": "intern_vit_6b",
        "norm_type": s.norm_type,
        "num_attention_heads": s.vision_heads,
        "num_channels": 3,
        "num_hidden_layers": s.vision_layers,
        "patch_size": s.patch_size,
        "qk_normalization": s.qk_normalization,
        "qkv_bias": s.qkv_bias,
        "torch_dtype": "bfloat16",
        "use_flash_attn": True,
    }


def _llm_config(s: InternVLSizes) -> dict:
    common = {
        "hidden_size": s.text_hidden,
        "intermediate_size": s.text_intermediate,
        "num_hidden_layers": s.text_layers,
        "num_attention_heads": s.text_heads,
        "num_key_value_heads": s.text_kv_heads,
        "vocab_size": s.vocab_size,
        "rms_norm_eps": s.rms_norm_eps,
        "rope_theta": s.rope_theta,
        "rope_scaling": {"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"},
        "hidden_act": "silu",
        "tie_word_embeddings": s.tie_word_embeddings,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }
    match s.llm:
        case "qwen2":
            return {
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "bos_token_id": 151643,
                "eos_token_id": 151645,
                "max_position_embeddings": 32768,
                "max_window_layers": 70,
                "sliding_window": None,
                "use_sliding_window": False,
                "attention_dropout": 0.0,
                **common,
            }
        case "internlm2":
            return {
                "architectures": ["InternLM2ForCausalLM"],
                "auto_map": {
                    "AutoConfig": "configuration_internlm2.InternLM2Config",
                    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
                },
                "model_type": "internlm2",
                "bias": False,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "pad_token_id": 2,
                "max_position_embeddings": 32768,
                "attn_implementation": "eager",
                **common,
            }
        case "llama":
            return {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "bos_token_id": 151643,
                "eos_token_id": 151645,
                "max_position_embeddings": 32768,
                "attention_bias": False,
                **common,
            }


def internvl_release_config(s: InternVLSizes, *, architecture: str = "InternVLChatModel") -> dict:
    """``config.json`` of an InternVL2.5 release (``InternVLChatConfig`` fields)."""
    modeling = "modeling_sa2va_chat.Sa2VAChatModel" if architecture == "Sa2VAChatModel" else "modeling_internvl_chat.InternVLChatModel"
    configuration = "configuration_sa2va_chat.Sa2VAChatConfig" if architecture == "Sa2VAChatModel" else "configuration_internvl_chat.InternVLChatConfig"
    return {
        "architectures": [architecture],
        "auto_map": {"AutoConfig": configuration, "AutoModel": modeling, "AutoModelForCausalLM": modeling},
        "downsample_ratio": s.downsample_ratio,
        "dynamic_image_size": True,
        "force_image_size": s.image_size,
        "llm_config": _llm_config(s),
        "max_dynamic_patch": s.max_dynamic_patch,
        "min_dynamic_patch": 1,
        "model_type": "sa2va_chat" if architecture == "Sa2VAChatModel" else "internvl_chat",
        "pad2square": False,
        "ps_version": "v2",
        "select_layer": -1,
        "template": "qwen_chat" if architecture == "Sa2VAChatModel" else "internvl2_5",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
        "vision_config": _vision_config(s),
    }


# ------------------------------------------------------------------------------------- tensors
def internvl_release_shapes(s: InternVLSizes) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of an InternVL2.5 release, in the official module names."""
    c, n = s.vision_hidden, (s.image_size // s.patch_size) ** 2
    yield "vision_model.embeddings.class_embedding", (1, 1, c)
    yield "vision_model.embeddings.patch_embedding.weight", (c, 3, s.patch_size, s.patch_size)
    yield "vision_model.embeddings.patch_embedding.bias", (c,)
    yield "vision_model.embeddings.position_embedding", (1, n + 1, c)
    for i in range(s.vision_layers):
        p = f"vision_model.encoder.layers.{i}."
        yield p + "attn.qkv.weight", (3 * c, c)
        if s.qkv_bias:
            yield p + "attn.qkv.bias", (3 * c,)
        if s.qk_normalization:
            yield p + "attn.q_norm.weight", (c,)
            yield p + "attn.k_norm.weight", (c,)
        yield p + "attn.proj.weight", (c, c)
        yield p + "attn.proj.bias", (c,)
        yield p + "mlp.fc1.weight", (s.vision_intermediate, c)
        yield p + "mlp.fc1.bias", (s.vision_intermediate,)
        yield p + "mlp.fc2.weight", (c, s.vision_intermediate)
        yield p + "mlp.fc2.bias", (c,)
        for norm in ("norm1", "norm2"):
            yield p + f"{norm}.weight", (c,)
            if s.norm_type == "layer_norm":
                yield p + f"{norm}.bias", (c,)
        yield p + "ls1", (c,)
        yield p + "ls2", (c,)
    shuffled = c * int(1 / s.downsample_ratio) ** 2
    d = s.text_hidden
    yield "mlp1.0.weight", (shuffled,)
    yield "mlp1.0.bias", (shuffled,)
    yield "mlp1.1.weight", (d, shuffled)
    yield "mlp1.1.bias", (d,)
    yield "mlp1.3.weight", (d, d)
    yield "mlp1.3.bias", (d,)
    yield from _language_model_shapes(s)


def _language_model_shapes(s: InternVLSizes) -> Iterator[tuple[str, tuple[int, ...]]]:
    d, head_dim, inter = s.text_hidden, s.text_hidden // s.text_heads, s.text_intermediate
    q, kv = s.text_heads * head_dim, s.text_kv_heads * head_dim
    if s.llm == "internlm2":
        yield "language_model.model.tok_embeddings.weight", (s.vocab_size, d)
        for i in range(s.text_layers):
            p = f"language_model.model.layers.{i}."
            yield p + "attention.wqkv.weight", (q + 2 * kv, d)
            yield p + "attention.wo.weight", (d, q)
            yield p + "feed_forward.w1.weight", (inter, d)
            yield p + "feed_forward.w3.weight", (inter, d)
            yield p + "feed_forward.w2.weight", (d, inter)
            yield p + "attention_norm.weight", (d,)
            yield p + "ffn_norm.weight", (d,)
        yield "language_model.model.norm.weight", (d,)
        if not s.tie_word_embeddings:
            yield "language_model.output.weight", (s.vocab_size, d)
        return
    yield "language_model.model.embed_tokens.weight", (s.vocab_size, d)
    for i in range(s.text_layers):
        p = f"language_model.model.layers.{i}."
        for proj, out in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            yield p + f"self_attn.{proj}.weight", (out, d)
            if s.llm == "qwen2":
                yield p + f"self_attn.{proj}.bias", (out,)
        yield p + "self_attn.o_proj.weight", (d, q)
        yield p + "mlp.gate_proj.weight", (inter, d)
        yield p + "mlp.up_proj.weight", (inter, d)
        yield p + "mlp.down_proj.weight", (d, inter)
        yield p + "input_layernorm.weight", (d,)
        yield p + "post_attention_layernorm.weight", (d,)
    yield "language_model.model.norm.weight", (d,)
    if not s.tie_word_embeddings:
        yield "language_model.lm_head.weight", (s.vocab_size, d)


def random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Random values at a scale that keeps a forward pass well conditioned: norms and layer
    scales near 1 (layer scales near 0.1, as InternViT's), weights and biases small."""
    leaf = name.rsplit(".", 1)[-1]
    base = torch.randn(shape, generator=generator, dtype=torch.float32)
    if leaf in ("ls1", "ls2"):
        value = 0.1 + 0.02 * base
    elif "norm" in name and leaf == "weight" or name.startswith("mlp1.0.") and leaf == "weight":
        value = 1.0 + 0.1 * base
    else:
        value = 0.05 * base
    return value.to(dtype)


def _shard(items: list[tuple[str, tuple[int, ...]]], max_shard_bytes: int | None, itemsize: int) -> list[list]:
    if max_shard_bytes is None:
        return [items]
    shards, current, size = [], [], 0
    for name, shape in items:
        nbytes = itemsize
        for dim in shape:
            nbytes *= dim
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    if current:
        shards.append(current)
    return shards


def write_safetensors_release(
    folder: Path,
    items: list[tuple[str, tuple[int, ...]]],
    *,
    dtype: torch.dtype,
    seed: int,
    max_shard_bytes: int | None = None,
    fixed: dict[str, torch.Tensor] | None = None,
) -> list[str]:
    """Write ``items`` with random values (or the ``fixed`` tensors) as ``model.safetensors`` or
    as shards plus ``model.safetensors.index.json``, one shard in memory at a time."""
    generator = torch.Generator().manual_seed(seed)
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards = _shard(items, max_shard_bytes, itemsize)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map, total = {}, 0
    for name, shard in zip(names, shards):
        tensors = {}
        for key, shape in shard:
            tensor = fixed[key].to(dtype) if fixed and key in fixed else random_tensor(key, shape, generator, dtype)
            tensors[key] = tensor.contiguous()
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return names


# ----------------------------------------------------------------------------------- tokenizer
def write_qwen_tokenizer_replica(folder: Path, *, extra_tokens: tuple[str, ...] = ()) -> None:
    """InternVL2.5-1B's tokenizer files (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``,
    ``added_tokens.json``, ``special_tokens_map.json``) with its ids, plus ``extra_tokens``
    appended as Sa2VA appends its own."""
    from tokenizers import pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for i in range(len(vocab), QWEN2_5_BASE_VOCAB):
        vocab[f"\u0120replica{i}"] = i  # unreachable fillers: the release's ids stay in place
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    added = [*QWEN2_5_ADDED_TOKENS, *INTERNVL_ADDED_TOKENS, *extra_tokens]
    ids = {token: QWEN2_5_BASE_VOCAB + i for i, token in enumerate(added)}
    special = {t for t in added if t not in ("<tool_call>", "</tool_call>") and not t.startswith("<|fim") and t not in ("<|repo_name|>", "<|file_sep|>")}
    decoder = {
        str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": t in special}
        for t in added
    }
    additional = ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                  "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
    tokenizer_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": additional,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 8192,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    (folder / "added_tokens.json").write_text(json.dumps({t: ids[t] for t in added}, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"additional_special_tokens": additional, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, indent=2)
    )


def _write_remote_code_stand_ins(folder: Path, names: list[str]) -> None:
    marker = folder / REMOTE_CODE_MARKER
    for name in names:
        (folder / name).write_text(
            "# Stand-in for the release's remote code: importing it records that it ran.\n"
            f"open({str(marker)!r}, 'w').write({name!r})\n"
        )


# ------------------------------------------------------------------------------------- writers
def write_internvl_release(
    folder: str | Path,
    sizes: InternVLSizes,
    *,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    max_shard_bytes: int | None = None,
    fixed: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A released InternVL2.5 folder (``InternVLChatModel``) with random weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(internvl_release_config(sizes), indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"_from_model_config": True, "eos_token_id": [151645, 151643]}))
    write_safetensors_release(folder, list(internvl_release_shapes(sizes)), dtype=dtype, seed=seed,
                              max_shard_bytes=max_shard_bytes, fixed=fixed)  # fmt: skip
    if sizes.llm != "internlm2":
        write_qwen_tokenizer_replica(folder)
    _write_remote_code_stand_ins(
        folder,
        ["configuration_internvl_chat.py", "modeling_internvl_chat.py", "configuration_intern_vit.py",
         "modeling_intern_vit.py", "conversation.py"],
    )  # fmt: skip
    return folder


def sam2_release_state(version: str, hiera: str, overrides: list[str], image_size: int, *, seed: int) -> dict[str, torch.Tensor]:
    """SAM-2's state dict as the ``sam2`` package builds it for a config (its own random
    initialisation, seeded), in the package's names."""
    from salma.config import sam_package_config
    from salma.sam_adapter import build_sam2_model

    torch.manual_seed(seed)
    model = build_sam2_model(
        config_name=sam_package_config(version, hiera), checkpoint=None, overrides=overrides, image_size=image_size
    )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def sa2va_sam_name(package_name: str) -> str:
    """A ``sam2`` package tensor name as Sa2VA's release stores it."""
    name = "grounding_encoder.sam2_model." + package_name
    return name[: -len(".gamma")] + ".g_weight" if name.endswith(".gamma") else name


def write_sa2va_release(
    folder: str | Path,
    sizes: InternVLSizes,
    *,
    sam_version: str = "2.0",
    sam_hiera: str = "large",
    sam_overrides: list[str] | None = None,
    sam_image_size: int = 1024,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    max_shard_bytes: int | None = None,
) -> Path:
    """A released Sa2VA folder (``Sa2VAChatModel``) with random weights: InternVL2.5 + SAM-2
    (SAM-2.0 Hiera-L in the releases) + ``text_hidden_fcs``, Sa2VA's tokenizer with its
    ``[SEG]`` tokens (the vocabulary, embeddings and head grown by 5)."""
    if sizes.llm != "qwen2":
        raise ValueError("the Sa2VA replica is written for the Qwen2-based releases (Sa2VA-1B, Sa2VA-4B)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = replace(sizes, vocab_size=sizes.vocab_size + len(SA2VA_ADDED_TOKENS))
    config = internvl_release_config(sizes, architecture="Sa2VAChatModel")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    sam = sam2_release_state(sam_version, sam_hiera, sam_overrides or [], sam_image_size, seed=seed)
    fixed = {sa2va_sam_name(k): v for k, v in sam.items()}
    prompt_dim = next(v for k, v in sam.items() if k == "sam_prompt_encoder.no_mask_embed.weight").shape[-1]
    d = sizes.text_hidden
    items = list(internvl_release_shapes(sizes))
    items += [(name, tuple(t.shape)) for name, t in fixed.items()]
    items += [
        ("text_hidden_fcs.0.weight", (d, d)),
        ("text_hidden_fcs.0.bias", (d,)),
        ("text_hidden_fcs.2.weight", (prompt_dim, d)),
        ("text_hidden_fcs.2.bias", (prompt_dim,)),
    ]
    write_safetensors_release(folder, items, dtype=dtype, seed=seed, max_shard_bytes=max_shard_bytes, fixed=fixed)
    write_qwen_tokenizer_replica(folder, extra_tokens=SA2VA_ADDED_TOKENS)
    _write_remote_code_stand_ins(
        folder,
        ["configuration_sa2va_chat.py", "modeling_sa2va_chat.py", "configuration_intern_vit.py",
         "modeling_intern_vit.py", "sam2.py", "templates.py"],
    )  # fmt: skip
    return folder
