"""Predictor on the tiny preset: image and 6-frame video, export round trip."""

import numpy as np
import pytest
import torch

from salma.builder import build_salma
from salma.config import SalmaConfig
from salma.export import STRICT_ALLOW_MISSING, export_config, export_model, load_exported, load_weights, save_weights
from salma.predictor import SalmaPredictor, init_tracking_state, key_frame_indices
from salma.testing import random_sample, tiny_salma_config


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    b = build_salma(tiny_salma_config())
    with torch.no_grad():
        b.model.mba.gamma.fill_(0.5)  # make MBA act, so the round trip covers it
    return b


@pytest.fixture(scope="module")
def model(built):
    return built.model


@pytest.fixture(scope="module")
def video():
    frames, masks, expressions = random_sample(np.random.default_rng(0), num_frames=6, num_objects=1, height=72, width=100)
    return np.stack(frames), expressions[0]


def test_key_frames_are_uniform_and_include_both_ends():
    assert key_frame_indices(6, 3) == [0, 2, 5]
    assert key_frame_indices(2, 5) == [0, 1]
    assert key_frame_indices(10, 3, "first") == [0, 1, 2]


def test_image_prediction_has_one_mask_per_seg_at_original_size(built, video):
    predictor = SalmaPredictor(built)
    out = predictor.segment(video[0][0], video[1], generate=False)
    assert out.answer.count("[SEG]") == 1 and len(out.masks) == 1
    assert "<|im_end|>" not in out.answer and out.answer.endswith(".")  # the turn's closing token is not the answer's
    assert out.masks[0].shape == (72, 100) and out.masks[0].dtype == bool
    assert out.prior.shape[0] == 1 and out.mba_energy.shape[:2] == (1, 1)


def test_video_prediction_covers_every_frame_and_runs_mba_on_key_frames(built, model, video):
    predictor = SalmaPredictor(built, num_key_frames=3)
    calls = model.sam.prepass_frames
    out = predictor.segment(video[0], video[1], generate=False)
    assert out.key_frames == [0, 2, 5]
    assert len(out.masks) == 1 and out.masks[0].shape == (6, 72, 100)
    assert model.sam.prepass_frames - calls == 3  # one pre-pass per key frame
    assert out.mba_energy.shape[:2] == (1, 3) and out.mba_energy.sum() > 0


def test_generated_answer_without_seg_gives_no_mask(built, video):
    predictor = SalmaPredictor(built, max_new_tokens=4)
    out = predictor.predict(video[0][0], "what is this?")
    assert len(out.masks) == out.answer.count("[SEG]")


def test_tracking_state_has_the_packages_keys(model, tmp_path, video):
    from PIL import Image

    for i, frame in enumerate(video[0]):
        Image.fromarray(frame).save(tmp_path / f"{i:05d}.jpg")
    sam = model.sam.sam
    theirs = sam.init_state(str(tmp_path))
    with torch.inference_mode():
        ours = init_tracking_state(sam, theirs["images"], 72, 100)
    assert set(ours) == set(theirs)
    assert (ours["video_height"], ours["video_width"]) == (theirs["video_height"], theirs["video_width"])


def test_export_round_trip_gives_identical_predictions(built, model, video, tmp_path):
    before = SalmaPredictor(built, num_key_frames=3).segment(video[0], video[1], generate=False)
    export_model(built, tmp_path / "export")
    reloaded = load_exported(tmp_path / "export")
    assert reloaded.model.mba is not None and torch.equal(reloaded.model.mba.gamma, model.mba.gamma)
    expected = export_config(built.config)
    expected.mllm.path = expected.mllm.tokenizer = str(tmp_path / "export" / "mllm")  # the folder's own MLLM
    assert reloaded.config == expected
    assert reloaded.tokenizer.get_vocab() == built.tokenizer.get_vocab()
    after = SalmaPredictor(reloaded, num_key_frames=3).segment(video[0], video[1], generate=False)
    assert after.answer == before.answer
    for a, b in zip(after.masks, before.masks):
        assert np.array_equal(a, b)


def test_lora_is_merged_on_export_and_outputs_do_not_change(tmp_path, video):
    from salma.config import resolve_model_config

    config = resolve_model_config({"preset": "tiny", "lora": {"enabled": True, "r": 4, "alpha": 8}})
    built = build_salma(config)
    model = built.model
    assert model.mllm.has_lora
    # LoRA B starts at zero: perturb it so merging matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    before = SalmaPredictor(built).segment(video[0][0], video[1], generate=False)
    export_model(built, tmp_path / "lora")
    reloaded = load_exported(tmp_path / "lora")
    assert not reloaded.model.mllm.has_lora
    after = SalmaPredictor(reloaded).segment(video[0][0], video[1], generate=False)
    assert np.array_equal(after.masks[0], before.masks[0])


def test_strict_loading_rejects_missing_and_unexpected_keys(model, tmp_path):
    assert STRICT_ALLOW_MISSING == frozenset()
    path = tmp_path / "w.safetensors"
    save_weights(model.mba, path)
    load_weights(model.mba, path)
    keys = set(model.mba.state_dict())
    with pytest.raises(ValueError, match="missing"):
        load_weights(model.mba, path, expected=keys | {"extra.weight"})
    with pytest.raises(ValueError, match="unexpected"):
        load_weights(model.mba, path, expected=keys - {"gamma"})


def test_the_module_carries_neither_tokenizer_nor_config(built, model):
    """The tokenizer and the resolved config belong to the bundle (and the predictor, the export,
    the pipelines that take it), not to the nn.Module; the module keeps the [SEG] id it needs."""
    assert not hasattr(model, "tokenizer") and not hasattr(model, "config")
    assert not any(isinstance(v, SalmaConfig) or hasattr(v, "convert_tokens_to_ids") for v in vars(model).values())
    assert model.seg_token_id == built.tokenizer.convert_tokens_to_ids("[SEG]")
    predictor = SalmaPredictor(built)
    assert predictor.tokenizer is built.tokenizer and predictor.config is built.config
    from_config = SalmaPredictor.from_config(tiny_salma_config())  # the README's way in
    assert from_config.config == built.config and from_config.tokenizer.get_vocab() == built.tokenizer.get_vocab()
