"""``salma convert sa2va``: a tiny replica of a released Sa2VA folder becomes a SALMA export
(MBA off) that decodes the same masks as the release's own tensors through the same path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from original_forward import original_forward, original_tensors
from safetensors.torch import load_file

from salma.config import tiny_config
from salma.image_transforms import resize_square, to_normalized_tensor
from salma.internvl_conversion import ConversionError
from salma.predictor import SalmaPredictor
from salma.sa2va_conversion import convert_sa2va
from salma.sam_adapter import SamAdapter, build_sam2_model

# Sa2VA adds ["[SEG]", "<p>", "</p>", "<vp>", "</vp>"] (projects/llava_sam2 configs,
# special_tokens) to InternVL2.5-1B's 151674-token vocabulary: [SEG] is 151674, and its
# conversion script sets llm_config.vocab_size = len(tokenizer) = 151679.
SA2VA_SEG_ID, SA2VA_VOCAB = 151674, 151679
IMG_CONTEXT_ID = 151667


def test_the_export_keeps_sa2vas_tokenizer_and_describes_the_baseline(sa2va_release, sa2va_export):
    assert json.loads((sa2va_release / "config.json").read_text())["llm_config"]["vocab_size"] == SA2VA_VOCAB
    document = json.loads((sa2va_export / "config.json").read_text())
    assert document["model_type"] == "salma" and document["dtype"] == "bfloat16"
    config = document["salma"]
    assert config["mba"]["enabled"] is False and config["sam"]["version"] == "2.0" and config["sam"]["hiera"] == "tiny"
    assert config["sam"]["suppress_no_object"] is True and config["sam"]["image_size"] == 128
    predictor = SalmaPredictor.from_pretrained(str(sa2va_export))
    tokenizer = predictor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["[SEG]", "<p>", "</p>", "<vp>", "</vp>"]) == list(range(151674, 151679))
    assert predictor.seg_token_id == SA2VA_SEG_ID and len(tokenizer) == SA2VA_VOCAB
    assert "Sa2VA baseline" in (sa2va_export / "README.md").read_text()


def test_sam2_weights_land_in_the_packages_names(sa2va_release, sa2va_export):
    release = original_tensors(sa2va_release)
    ours = {k: v.float() for k, v in load_file(str(sa2va_export / "salma.safetensors")).items()}
    fuser = "memory_encoder.fuser.layers.0"
    assert torch.equal(ours[f"sam.sam.{fuser}.gamma"], release[f"grounding_encoder.sam2_model.{fuser}.g_weight"])
    assert torch.equal(ours["seg_projector.2.weight"], release["text_hidden_fcs.2.weight"])
    assert not any(k.startswith(("mba.", "expression_projector.")) for k in ours)


def test_converted_sa2va_gives_the_masks_of_its_original_tensors(sa2va_release, sa2va_export, monkeypatch):
    """Reference: the MLLM forward of the original tensors (``original_forward``), the [SEG]
    hidden state through ``text_hidden_fcs``, and the original SAM-2 tensors (``g_weight``
    renamed back to the package's ``gamma``, as Sa2VA's conversion script renamed it) decoding
    that prompt in the same SAM-2 decode path; against the converted folder's prediction."""
    predictor = SalmaPredictor.from_pretrained(str(sa2va_export))
    # What the predictor feeds the MLLM: the tiles' pixels (encoded once per record) and the token
    # ids of prompt + answer (embedded with those image features).
    seen = {}
    mllm = predictor.model.mllm
    image_features, embed = mllm.image_features, mllm.embed

    def features_of(pixel_values):
        seen["pixel_values"] = pixel_values
        return image_features(pixel_values)

    def embedded(input_ids, features):
        seen["input_ids"] = input_ids
        return embed(input_ids, features)

    monkeypatch.setattr(mllm, "image_features", features_of)
    monkeypatch.setattr(mllm, "embed", embedded)
    image = np.random.default_rng(5).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    prediction = predictor.segment(image, "the red circle", generate=False)
    ids, pixels = seen["input_ids"], seen["pixel_values"]
    assert (ids == SA2VA_SEG_ID).sum() == 1 and len(prediction.masks) == 1

    state = original_tensors(sa2va_release)
    _, hidden = original_forward(sa2va_release, ids, pixels, IMG_CONTEXT_ID)
    seg = hidden[ids == SA2VA_SEG_ID]  # (1, D): at the [SEG] position
    prompt = F.linear(F.relu(F.linear(seg, state["text_hidden_fcs.0.weight"], state["text_hidden_fcs.0.bias"])),
                      state["text_hidden_fcs.2.weight"], state["text_hidden_fcs.2.bias"])  # fmt: skip
    sam = build_sam2_model(config_name="configs/sam2/sam2_hiera_t.yaml", checkpoint=None,
                           overrides=tiny_config().sam.overrides, image_size=128)  # fmt: skip
    prefix = "grounding_encoder.sam2_model."
    sam.load_state_dict({k[len(prefix):].replace(".g_weight", ".gamma"): v for k, v in state.items() if k.startswith(prefix)})
    adapter = SamAdapter(sam=sam.eval())
    with torch.no_grad():
        features = adapter.encode(to_normalized_tensor([resize_square(image, 128)]))
        decoded = adapter.decode(features.image_embed, features.high_res, prompt[:, None], suppress_no_object=True)
        logits = F.interpolate(decoded.masks.float(), size=image.shape[:2], mode="bilinear", align_corners=False)
    expected = (logits[0, 0] > 0).numpy()
    assert 0 < expected.mean() < 1  # a mask with something in it and something outside
    assert np.array_equal(prediction.masks[0], expected)


def test_a_sam_config_that_does_not_fit_the_release_is_refused(sa2va_release, tmp_path):
    # The release's default (SAM-2.0 Hiera-L) is not what this tiny replica holds.
    with pytest.raises(ConversionError, match="do not fit the target architecture"):
        convert_sa2va(sa2va_release, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_internvl_folder_is_pointed_to_convert_internvl(tmp_path):
    from salma.release_replicas import tiny_sizes, write_internvl_release

    src = write_internvl_release(tmp_path / "release", tiny_sizes())
    with pytest.raises(ConversionError, match="salma convert internvl"):
        convert_sa2va(src, tmp_path / "out")
