"""Reference forward passes of the released InternVL2.5 / Sa2VA models, computed from their
original tensors (original names, fused ``qkv`` / ``wqkv``) and written from the official
modelling code's semantics (OpenGVLab/InternVL ``modeling_intern_vit.py``,
``modeling_internvl_chat.py`` ``extract_feature`` / ``pixel_shuffle`` (ps_version v2),
``modeling_internlm2.py``), independently of the converters. The Qwen2 language model is
transformers' own ``Qwen2ForCausalLM``, which is what ``InternVLChatModel`` instantiates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def original_tensors(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update({k: v.float() for k, v in load_file(str(path)).items()})
    return state


def _norm(x, state, prefix, kind, eps):
    if kind == "layer_norm":
        return F.layer_norm(x, x.shape[-1:], state[prefix + ".weight"], state[prefix + ".bias"], eps)
    return _rms(x, state[prefix + ".weight"], eps)


def _rms(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def vision_embeddings(state: dict, config: dict, pixel_values: torch.Tensor) -> torch.Tensor:
    """InternViT + pixel shuffle (v2) + mlp1: (tiles, 3, S, S) → (tiles, tokens, D)."""
    v = config["vision_config"]
    eps, heads, kind = v["layer_norm_eps"], v["num_attention_heads"], v["norm_type"]
    p = "vision_model."
    x = F.conv2d(pixel_values, state[p + "embeddings.patch_embedding.weight"],
                 state[p + "embeddings.patch_embedding.bias"], stride=v["patch_size"])  # fmt: skip
    b, c, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)  # (B, N, C)
    x = torch.cat([state[p + "embeddings.class_embedding"].expand(b, 1, c), x], dim=1)
    x = x + state[p + "embeddings.position_embedding"]
    for i in range(v["num_hidden_layers"]):
        q = f"{p}encoder.layers.{i}."
        y = _norm(x, state, q + "norm1", kind, eps)
        qkv = F.linear(y, state[q + "attn.qkv.weight"], state.get(q + "attn.qkv.bias"))
        qkv = qkv.reshape(b, -1, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
        qh, kh, vh = qkv.unbind(0)
        if v.get("qk_normalization"):
            n = qh.shape[2]
            qh = _rms(qh.transpose(1, 2).flatten(-2), state[q + "attn.q_norm.weight"], eps).view(b, n, heads, -1).transpose(1, 2)
            kh = _rms(kh.transpose(1, 2).flatten(-2), state[q + "attn.k_norm.weight"], eps).view(b, n, heads, -1).transpose(1, 2)
        attn = ((qh * (c // heads) ** -0.5) @ kh.transpose(-2, -1)).softmax(-1)
        y = (attn @ vh).transpose(1, 2).reshape(b, -1, c)
        y = F.linear(y, state[q + "attn.proj.weight"], state[q + "attn.proj.bias"])
        x = x + y * state[q + "ls1"]
        y = _norm(x, state, q + "norm2", kind, eps)
        y = F.linear(F.gelu(F.linear(y, state[q + "mlp.fc1.weight"], state[q + "mlp.fc1.bias"])),
                     state[q + "mlp.fc2.weight"], state[q + "mlp.fc2.bias"])  # fmt: skip
        x = x + y * state[q + "ls2"]
    x = x[:, 1:].reshape(b, h, w, c)
    # pixel_shuffle(scale 0.5), ps_version v2, exactly as InternVLChatModel.pixel_shuffle
    n, ww, hh, cc = x.shape
    x = x.view(n, ww, hh // 2, cc * 2).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, hh // 2, ww // 2, cc * 4).permute(0, 2, 1, 3).contiguous()
    x = x.reshape(n, -1, cc * 4)
    x = F.layer_norm(x, x.shape[-1:], state["mlp1.0.weight"], state["mlp1.0.bias"], 1e-5)
    x = F.linear(F.gelu(F.linear(x, state["mlp1.1.weight"], state["mlp1.1.bias"])), state["mlp1.3.weight"], state["mlp1.3.bias"])
    return x


def _rope(x, positions, theta):
    dim = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2).float() / dim))
    freqs = positions[:, None].float() * inv[None]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    half = dim // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def internlm2_forward(state: dict, llm: dict, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """InternLM2ForCausalLM on input embeddings (B, L, D) → (logits, last hidden states)."""
    heads, kv, d = llm["num_attention_heads"], llm["num_key_value_heads"], llm["hidden_size"]
    hd, groups, eps = d // heads, heads // kv, llm["rms_norm_eps"]
    b, length, _ = embeds.shape
    positions = torch.arange(length)
    mask = torch.full((length, length), float("-inf")).triu(1)
    x = embeds
    for i in range(llm["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        y = _rms(x, state[p + "attention_norm.weight"], eps)
        qkv = F.linear(y, state[p + "attention.wqkv.weight"]).view(b, length, kv, groups + 2, hd)
        q = qkv[..., :groups, :].reshape(b, length, heads, hd).transpose(1, 2)
        k = qkv[..., -2, :].transpose(1, 2)
        v = qkv[..., -1, :].transpose(1, 2)
        q, k = _rope(q, positions, llm["rope_theta"]), _rope(k, positions, llm["rope_theta"])
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(hd) + mask).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(b, length, d)
        x = x + F.linear(y, state[p + "attention.wo.weight"])
        y = _rms(x, state[p + "ffn_norm.weight"], eps)
        y = F.linear(F.silu(F.linear(y, state[p + "feed_forward.w1.weight"])) * F.linear(y, state[p + "feed_forward.w3.weight"]),
                     state[p + "feed_forward.w2.weight"])  # fmt: skip
        x = x + y
    hidden = _rms(x, state["language_model.model.norm.weight"], eps)
    return F.linear(hidden, state["language_model.output.weight"]), hidden


def original_forward(folder: Path, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_token_id: int):
    """Logits and last-layer hidden states of the released model in ``folder``."""
    config = json.loads((folder / "config.json").read_text())
    state = original_tensors(folder)
    llm = config["llm_config"]
    vit = vision_embeddings(state, config, pixel_values)
    if llm["architectures"][0] == "InternLM2ForCausalLM":
        embeds = F.embedding(input_ids, state["language_model.model.tok_embeddings.weight"]).clone()
        embeds[input_ids == image_token_id] = vit.reshape(-1, embeds.shape[-1])
        return internlm2_forward(state, llm, embeds)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    lm = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in llm.items() if k != "architectures"})).eval()
    lm_state = {k.removeprefix("language_model."): v for k, v in state.items() if k.startswith("language_model.")}
    lm.load_state_dict(lm_state, strict=True)
    embeds = lm.get_input_embeddings()(input_ids).clone()
    embeds[input_ids == image_token_id] = vit.reshape(-1, embeds.shape[-1])
    with torch.no_grad():
        out = lm(inputs_embeds=embeds, output_hidden_states=True)
    return out.logits, out.hidden_states[-1]
