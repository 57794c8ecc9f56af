"""``salma convert internvl``: tiny replicas of the released InternVL2.5 layouts (Qwen2- and
InternLM2-based, single-file and sharded) converted to transformers' native layout, checked
against a reference forward computed from the original tensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from original_forward import original_forward
from safetensors.torch import load_file, save_file
from transformers import InternVLForConditionalGeneration, PreTrainedTokenizerFast

from salma.checkpoint_layout import stored_tensors
from salma.internvl_conversion import ConversionError, convert_internvl, split_wqkv
from salma.release_replicas import (
    INTERNLM2_IMG_CONTEXT_ID,
    INTERNVL_ADDED_TOKENS,
    REMOTE_CODE_MARKER,
    tiny_sizes,
    write_internvl_release,
)

# InternVL2.5-1B's tokenizer: <img> 151665, </img> 151666, <IMG_CONTEXT> 151667 (its
# tokenizer_config.json added_tokens_decoder; transformers' InternVL conversion script also uses
# image_token_id 151667 for the Qwen2-based releases and 92546 for the InternLM2-based ones).
QWEN_IMG_START, QWEN_IMG_CONTEXT, QWEN_IMG_END = 151665, 151667, 151666


def _prompt(img_start: int, img_context: int, img_end: int, tiles: int, tokens_per_tile: int) -> torch.Tensor:
    text = [151644, 872, 198] if img_start > 100000 else [92543, 1008, 364]  # "<|im_start|>user\n"
    return torch.tensor([text + [img_start] + [img_context] * (tiles * tokens_per_tile) + [img_end, 198, 40, 41, 42]])


def _native_logits(folder: Path, input_ids, pixel_values):
    model = InternVLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=input_ids, pixel_values=pixel_values).logits


def write_internlm2_tokenizer(folder: Path) -> Path:
    """A transformers tokenizer with InternVL2.5-2B's ids (InternLM2's 92544 entries, then
    InternVL's added tokens at 92544..92552; <IMG_CONTEXT> = 92546), as `--tokenizer` takes it."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import BPE

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for i in range(len(vocab), 92542):
        vocab[f"\u0120replica{i}"] = i
    vocab.update({"<|im_end|>": 92542, "<|im_start|>": 92543})  # InternLM2's chat tokens
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", *INTERNVL_ADDED_TOKENS]})
    assert tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") == INTERNLM2_IMG_CONTEXT_ID
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "sizes, shard_bytes",
    [
        (tiny_sizes("qwen2"), 3_000_000),  # InternVL2.5-1B / 4B layout, sharded
        (tiny_sizes("qwen2", norm_type="rms_norm", qk_normalization=True, qkv_bias=False), None),  # 26B-style ViT
        (tiny_sizes("internlm2", text_heads=4, text_kv_heads=2), None),  # InternVL2.5-2B / 8B layout
    ],
    ids=["qwen2-sharded", "qwen2-rmsnorm-qknorm", "internlm2"],
)
def test_converted_internvl_gives_the_logits_of_the_original_tensors(tmp_path, sizes, shard_bytes):
    src = write_internvl_release(tmp_path / "release", sizes, max_shard_bytes=shard_bytes, seed=3)
    tokenizer = None if sizes.llm != "internlm2" else write_internlm2_tokenizer(tmp_path / "tokenizer")
    summary = convert_internvl(src, tmp_path / "hf", tokenizer=tokenizer)
    assert not (src / REMOTE_CODE_MARKER).exists()  # the release's code never ran

    tokens = (sizes.image_size // sizes.patch_size // 2) ** 2
    if sizes.llm == "internlm2":
        ids = _prompt(92544, INTERNLM2_IMG_CONTEXT_ID, 92545, 2, tokens)
        image_token = INTERNLM2_IMG_CONTEXT_ID
    else:
        ids = _prompt(QWEN_IMG_START, QWEN_IMG_CONTEXT, QWEN_IMG_END, 2, tokens)
        image_token = QWEN_IMG_CONTEXT
    pixels = torch.randn(2, 3, sizes.image_size, sizes.image_size, generator=torch.Generator().manual_seed(0))
    expected, _ = original_forward(src, ids, pixels, image_token)
    actual = _native_logits(tmp_path / "hf", ids, pixels)
    assert expected.abs().max() > 0.1  # a forward that carries signal
    torch.testing.assert_close(actual, expected, atol=2e-4, rtol=1e-4)

    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["image_token_id"] == image_token and config["tie_word_embeddings"] is False
    assert summary.written_parameters == summary.source_parameters
    stored = stored_tensors(tmp_path / "hf")
    assert {spec.dtype for spec in stored.values()} == {torch.bfloat16}  # bf16 in, bf16 out
    if shard_bytes:
        assert len({spec.file for spec in stored.values()}) == len(set(json.loads(
            (src / "model.safetensors.index.json").read_text())["weight_map"].values()))  # fmt: skip


def test_the_summary_accounts_for_every_tensor(tmp_path):
    src = write_internvl_release(tmp_path / "release", tiny_sizes(), max_shard_bytes=3_000_000)
    summary = convert_internvl(src, tmp_path / "hf")
    layers = tiny_sizes().vision_layers
    assert summary.source_tensors + 4 * layers == summary.written_tensors  # qkv weight and bias: 3 each
    assert summary.splits == {"InternViT qkv -> q/k/v": layers}
    text = "\n".join(summary.lines())
    assert "separate" in text and f"{summary.source_parameters:,} parameters" in text


def test_a_release_without_a_head_converts_tied(tmp_path):
    sizes = tiny_sizes(tie_word_embeddings=True)
    src = write_internvl_release(tmp_path / "release", sizes)
    convert_internvl(src, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["text_config"]["tie_word_embeddings"] is True
    model = InternVLForConditionalGeneration.from_pretrained(tmp_path / "hf")
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_internlm2_wqkv_split_follows_the_grouped_layout():
    # 2 key-value groups of 2 query heads, head_dim 1: rows are [q0 q1 k0 v0 | q2 q3 k1 v1].
    wqkv = torch.arange(8.0)[:, None]
    assert split_wqkv(wqkv, 0, 2, 1).flatten().tolist() == [0, 1, 4, 5]
    assert split_wqkv(wqkv, 1, 2, 1).flatten().tolist() == [2, 6]
    assert split_wqkv(wqkv, 2, 2, 1).flatten().tolist() == [3, 7]


def _edit_single_file(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s.update({"vision_model.encoder.layers.0.attn.extra": torch.zeros(2)}), "have no mapping"),
        (lambda s: s.pop("mlp1.3.bias"), "1 missing"),
        (lambda s: s.update({"mlp1.3.bias": torch.zeros(5, dtype=torch.bfloat16)}), "of another shape"),
    ],
    ids=["unmapped", "missing", "wrong-shape"],
)
def test_an_unmappable_release_is_refused_before_anything_is_written(tmp_path, edit, match):
    src = write_internvl_release(tmp_path / "release", tiny_sizes())
    _edit_single_file(src, edit)
    with pytest.raises(ConversionError, match=match):
        convert_internvl(src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert not list((tmp_path / "hf.partial").glob("*.safetensors"))


def test_refusals_name_the_problem(tmp_path):
    src = write_internvl_release(tmp_path / "release", tiny_sizes())
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "ps_version": "v1"}))
    with pytest.raises(ConversionError, match="ps_version='v1'"):
        convert_internvl(src, tmp_path / "hf")
    (src / "config.json").write_text(json.dumps({**config, "architectures": ["Sa2VAChatModel"], "model_type": "sa2va_chat"}))
    with pytest.raises(ConversionError, match="salma convert sa2va"):
        convert_internvl(src, tmp_path / "hf2")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="not empty"):
        convert_internvl(src, tmp_path / "used")


def test_an_internlm2_release_needs_a_transformers_tokenizer(tmp_path):
    src = write_internvl_release(tmp_path / "release", tiny_sizes("internlm2"))
    (src / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
    }))  # fmt: skip
    with pytest.raises(ConversionError, match="--tokenizer DIR"):
        convert_internvl(src, tmp_path / "hf")
