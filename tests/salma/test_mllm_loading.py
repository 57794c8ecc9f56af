"""Loading an MLLM folder: released remote-code layouts are refused before anything is
allocated, a native folder is checked against its config from the file headers, and a separate
output head stays separate through build, LoRA merge and export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import InternVLForConditionalGeneration

from salma.builder import build_salma
from salma.checkpoint_layout import CheckpointLayoutError, stored_tensors
from salma.config import resolve_model_config
from salma.export import export_model, load_exported
from salma.mllm import internvl_config, native_module_name
from salma.release_replicas import (
    INTERNVL2_5_1B,
    REMOTE_CODE_MARKER,
    internvl_release_config,
    write_qwen_tokenizer_replica,
)

TINY_SAM = resolve_model_config({"preset": "tiny"}).sam.model_dump()


@pytest.fixture
def forbid_allocation(monkeypatch):
    """``forbid_allocation()`` makes the test fail if an InternVL model is then instantiated on a
    real device (a spy on the constructor: the refusal must come first)."""
    original = InternVLForConditionalGeneration.__init__

    def guarded(self, config, *args, **kwargs):
        if torch.empty(0).device.type != "meta":
            raise AssertionError("an InternVL model was allocated before the folder was refused")
        original(self, config, *args, **kwargs)

    return lambda: monkeypatch.setattr(InternVLForConditionalGeneration, "__init__", guarded)


def _salma_config(path: Path, **delta):
    return resolve_model_config({"preset": "salma-1b", "mllm": {"path": str(path), "tile_size": 56,
                                 "max_tiles": 2, "vision": {"patch_size": 14}},
                                 "sam": TINY_SAM, "lora": {"enabled": False}, **delta})  # fmt: skip


def test_a_released_internvl_folder_is_refused_before_allocation(tmp_path, forbid_allocation):
    forbid_allocation()
    # The full-size InternVL2.5-1B config.json: on today's native class it would fall back to a
    # default 4096-wide Qwen2 and allocate ~45 GiB.
    (tmp_path / "config.json").write_text(json.dumps(internvl_release_config(INTERNVL2_5_1B)))
    with pytest.raises(CheckpointLayoutError, match=r"salma convert internvl .* --out"):
        build_salma(_salma_config(tmp_path))
    assert not (tmp_path / REMOTE_CODE_MARKER).exists()


def test_a_released_sa2va_folder_is_refused_naming_its_command(tmp_path, forbid_allocation):
    forbid_allocation()
    folder = tmp_path / "sa2va"
    (folder).mkdir()
    config = internvl_release_config(INTERNVL2_5_1B, architecture="Sa2VAChatModel")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointLayoutError, match=r"salma convert sa2va"):
        build_salma(_salma_config(folder))


def _native_folder(folder: Path, *, tie_flag: bool, vocab: int = 151674) -> dict[str, torch.Tensor]:
    """A native InternVL folder in InternVL2.5-1B's shape of things (vocabulary 151674, a
    separate output head) whose config says ``tie_word_embeddings: true``, as transformers'
    upstream conversion writes it; returns the stored tensors."""
    torch.manual_seed(0)
    config = internvl_config(
        vision=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, patch_size=14,
                    attention_bias=True, layer_scale_init_value=0.1, norm_type="layer_norm", use_qk_norm=False),
        text=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
                  vocab_size=vocab, max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=False),
        tile_size=56, downsample_ratio=0.5, projector_hidden_act="gelu", image_token_id=151667, tokens_per_tile=4,
    )  # fmt: skip
    model = InternVLForConditionalGeneration(config)
    with torch.no_grad():
        model.lm_head.weight.normal_()  # clearly not the input embedding
    model.save_pretrained(folder)
    document = json.loads((folder / "config.json").read_text())
    document["tie_word_embeddings"] = tie_flag
    document["text_config"]["tie_word_embeddings"] = tie_flag
    (folder / "config.json").write_text(json.dumps(document))
    write_qwen_tokenizer_replica(folder)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_separate_head_stays_separate_through_build_lora_merge_and_export(tmp_path):
    """Regression: with ``tie_word_embeddings: true`` in config.json, resizing the embeddings
    for SALMA's five tokens used to tie the head to the input embeddings, replacing
    InternVL2.5-1B's trained head (and the export then carried no head at all)."""
    stored = _native_folder(tmp_path / "mllm", tie_flag=True)
    head, embed = stored["lm_head.weight"], stored["model.language_model.embed_tokens.weight"]
    built = build_salma(_salma_config(tmp_path / "mllm", lora={"enabled": True, "r": 4, "alpha": 8}))
    internvl = built.model.mllm.model
    assert len(built.tokenizer) == 151674 + 5  # the SALMA tokens made the resize happen
    new_head = internvl.get_output_embeddings().weight
    assert new_head.data_ptr() != internvl.get_input_embeddings().weight.data_ptr()
    assert torch.equal(new_head[:151674], head)
    assert torch.equal(internvl.get_input_embeddings().weight[:151674], embed)
    ids = torch.tensor([[151644, 872, 198]])  # "<|im_start|>user\n" (no image: text only)
    with torch.no_grad():
        logits = internvl(input_ids=ids).logits[0, :, :151674]
        reference = torch.nn.functional.linear(internvl(input_ids=ids, output_hidden_states=True).hidden_states[-1][0], head)
    assert torch.allclose(logits, reference, atol=1e-5)

    out = export_model(built, tmp_path / "export")  # merges LoRA
    assert "language_model.lm_head.weight" in stored_tensors(out / "mllm")
    reloaded = load_exported(out).model.mllm.model
    assert torch.equal(reloaded.get_output_embeddings().weight, new_head)
    assert reloaded.get_output_embeddings().weight.data_ptr() != reloaded.get_input_embeddings().weight.data_ptr()


def test_a_native_folder_whose_tensors_do_not_fit_its_config_is_refused_before_allocation(tmp_path, forbid_allocation):
    folder = tmp_path / "mllm"
    _native_folder(folder, tie_flag=False)
    document = json.loads((folder / "config.json").read_text())
    document["text_config"]["hidden_size"] = 24  # the config no longer describes the tensors
    (folder / "config.json").write_text(json.dumps(document))
    forbid_allocation()
    with pytest.raises(CheckpointLayoutError, match="do not fit the architecture"):
        build_salma(_salma_config(folder))


def test_the_image_geometry_must_match_the_checkpoint(tmp_path):
    _native_folder(tmp_path / "mllm", tie_flag=False)
    config = _salma_config(tmp_path / "mllm")
    config.mllm.tile_size = 112
    with pytest.raises(ValueError, match=r"model.mllm.tile_size=56"):
        build_salma(config)


def test_native_names_map_to_the_models_state_dict(tmp_path):
    stored = _native_folder(tmp_path / "mllm", tie_flag=False)
    on_disk = stored_tensors(tmp_path / "mllm")
    assert {native_module_name(k) for k in on_disk} == set(stored)


@pytest.mark.parametrize(
    "index, match",
    [
        ({"weight_map": {"a": "../outside.safetensors"}}, "not a plain file name"),
        ({"weight_map": {"a": "model-1.safetensors"}}, "names shard model-1.safetensors, which is missing"),
        ({"weights": {}}, "no weight_map"),
    ],
)
def test_a_hostile_shard_index_is_refused(tmp_path, index, match):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointLayoutError, match=match):
        stored_tensors(tmp_path)


def test_a_shard_storing_tensors_the_index_places_elsewhere_is_refused(tmp_path):
    save_file({"a": torch.zeros(2), "b": torch.zeros(2)}, str(tmp_path / "model-1.safetensors"))
    save_file({"c": torch.zeros(2)}, str(tmp_path / "model-2.safetensors"))
    index = {"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors", "c": "model-2.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointLayoutError, match="stores b, which"):
        stored_tensors(tmp_path)


def test_pickle_weights_are_not_read(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointLayoutError, match="pickle weights are not read"):
        stored_tensors(tmp_path)


def test_a_truncated_safetensors_file_names_the_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointLayoutError, match="model.safetensors: not a readable safetensors file"):
        stored_tensors(tmp_path)
