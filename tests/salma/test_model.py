"""The whole model on the tiny preset: losses, gradients, baseline switch, pre-pass count, sizes."""

import subprocess
import sys

import pytest
import torch

from salma.builder import build_salma, count_parameters
from salma.config import resolve_model_config, salma_1b_config
from salma.testing import random_batch, tiny_salma_config


@pytest.fixture(scope="module")
def tiny_built():
    return build_salma(tiny_salma_config())


@pytest.fixture(scope="module")
def tiny_model(tiny_built):
    return tiny_built.model


@pytest.fixture(scope="module")
def tiny_cfg(tiny_built):
    return tiny_built.config


def test_import_salma_keeps_platform_packages_out():
    code = (
        "import sys, salma, salma.builder, salma.model, salma.predictor, salma.metrics, salma.testing; "
        "salma.build_salma(salma.testing.tiny_salma_config()); "
        "bad = [m for m in ('ray', 'mlflow', 'deepspeed') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_forward_returns_every_term_and_all_parameters_get_gradients(tiny_model, tiny_cfg):
    batch = random_batch(tiny_cfg, batch_size=2, num_frames=2)
    tiny_model.zero_grad()
    tiny_model.set_schedule(5, 10)
    out = tiny_model(batch)
    assert set(out) == {"lm", "mask_bce", "mask_dice", "iou", "object", "track", "boundary", "tmc", "total"}
    assert all(torch.isfinite(v) for v in out.values())
    out["total"].backward()
    missing = [n for n, p in tiny_model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def _memory_grads(model) -> float:
    memory = [*model.sam.sam.memory_attention.parameters(), *model.sam.sam.memory_encoder.parameters()]
    return sum(float(p.grad.abs().sum()) for p in memory if p.grad is not None)


def test_track_term_trains_sam2s_memory_path_on_video_objects_only(tiny_model, tiny_cfg):
    assert tiny_model.loss.track_weight == 1.0  # on in the tiny preset
    video = random_batch(tiny_cfg, batch_size=2, num_frames=3)
    tiny_model.zero_grad()
    out = tiny_model(video)
    assert out["track"] > 0
    out["track"].backward()
    assert _memory_grads(tiny_model) > 0
    image = random_batch(tiny_cfg, batch_size=2, num_frames=1)
    assert tiny_model(image)["track"].item() == 0.0


def test_without_the_track_term_the_memory_path_gets_no_gradient():
    config = resolve_model_config({"preset": "tiny", "loss": {"track_weight": 0.0}})
    model = build_salma(config).model
    out = model(random_batch(config, batch_size=2, num_frames=3))
    assert out["track"].item() == 0.0
    out["total"].backward()
    assert _memory_grads(model) == 0.0


def test_text_only_batch_still_gives_every_parameter_a_gradient(tiny_model, tiny_cfg):
    batch = random_batch(tiny_cfg, batch_size=2, num_frames=1, num_objects=0)
    assert batch.num_objects == 0
    tiny_model.zero_grad()
    out = tiny_model(batch)
    out["total"].backward()
    assert out["mask_bce"].item() == 0.0
    missing = [n for n, p in tiny_model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_prepass_runs_once_per_frame_whatever_the_number_of_objects(tiny_model, tiny_cfg):
    batch = random_batch(tiny_cfg, batch_size=1, num_frames=1, num_objects=5)
    assert batch.num_objects == 5 and batch.pair_object_index.numel() == 5
    calls, frames = tiny_model.sam.prepass_calls, tiny_model.sam.prepass_frames
    with torch.no_grad():
        tiny_model(batch)
    assert tiny_model.sam.prepass_calls - calls == 1
    assert tiny_model.sam.prepass_frames - frames == 1


def test_baseline_is_the_same_class_with_mba_off():
    config = resolve_model_config({"preset": "tiny", "mba": {"enabled": False}})
    model = build_salma(config).model
    assert model.mba is None and model.expression_projector is None
    out = model(random_batch(config))
    out["total"].backward()
    assert model.sam.prepass_calls == 0


def test_gamma_and_aux_schedules_follow_the_global_step(tiny_model):
    assert tiny_model.set_schedule(0, 100) == {"gamma_scale": 0.0, "aux_scale": 0.0}
    s = tiny_model.set_schedule(5, 100)
    assert s["gamma_scale"] == pytest.approx(0.5) and s["aux_scale"] == pytest.approx(0.25)
    assert tiny_model.set_schedule(50, 100) == {"gamma_scale": 1.0, "aux_scale": 1.0}


def test_seg_only_language_uses_a_single_token():
    config = resolve_model_config({"preset": "tiny", "mba": {"language_tokens": "seg_only"}})
    model = build_salma(config).model
    assert model.expression_projector is None
    batch = random_batch(config)
    language, mask = model.language_tokens(
        torch.zeros(batch.num_objects, model.sam.embed_dim), torch.zeros(2, batch.input_ids.shape[1], 64),
        batch.seg_sample_index, batch.expr_positions,
    )
    assert language.shape[1] == 1 and mask.all()


def test_expression_tokens_are_gathered_at_the_expression_positions(tiny_built):
    batch = random_batch(tiny_built.config, batch_size=2, num_frames=1, tokenizer=tiny_built.tokenizer)
    tok = tiny_built.tokenizer
    for o in range(batch.num_objects):
        b = int(batch.seg_sample_index[o])
        pos = batch.expr_positions[o][batch.expr_positions[o] >= 0]
        words = tok.convert_ids_to_tokens(batch.input_ids[b, pos].tolist())
        assert words[0] == "the" and words[-1] == "square"


def test_unknown_config_keys_are_errors():
    with pytest.raises(ValueError, match="extra"):
        resolve_model_config({"preset": "tiny", "mba": {"temperature": 2.0}})
    with pytest.raises(ValueError, match="tau"):
        resolve_model_config({"preset": "tiny", "mba": {"tau": 0}})


def test_salma_1b_architecture_matches_published_sizes():
    """InternVL2.5-1B ≈ 0.94 B parameters, SAM-2.1 Hiera-L ≈ 224 M (built on the meta device)."""
    from salma.builder import build_internvl
    from salma.sam_adapter import build_sam2_model
    from salma.tokenizer import build_tiny_tokenizer

    config = salma_1b_config()
    internvl = build_internvl(config, build_tiny_tokenizer(), device="meta")
    n_mllm = count_parameters(internvl)
    # Hiera's constructor calls .item() on a tensor, which the meta device cannot do: build on CPU.
    sam = build_sam2_model(config_name=config.sam.config_name, checkpoint=None, overrides=[], image_size=1024)
    n_sam = count_parameters(sam)
    assert abs(n_mllm / 0.938e9 - 1) < 0.02, n_mllm
    assert abs(n_sam / 224.4e6 - 1) < 0.02, n_sam


def test_min_loss_selection_trains_the_iou_head_and_reaches_every_parameter():
    config = tiny_salma_config()
    config.loss.mask_selection = "min_loss"
    model = build_salma(config).model
    batch = random_batch(config, batch_size=2, num_frames=2)
    model.set_schedule(5, 10)
    out = model(batch)
    assert out["iou"].item() > 0
    out["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    iou_head = model.sam.sam.sam_mask_decoder.iou_prediction_head
    assert any(p.grad.abs().sum() > 0 for p in iou_head.parameters())


def test_predicted_iou_selection_leaves_the_iou_term_at_zero(tiny_model, tiny_cfg):
    assert tiny_model.loss.mask_selection == "predicted_iou"
    out = tiny_model(random_batch(tiny_cfg, batch_size=1, num_frames=1))
    assert out["iou"].item() == 0.0


def test_the_object_presence_loss_trains_the_presence_head_when_weighted():
    config = tiny_salma_config()
    assert config.loss.object_weight == 1.0  # the tiny preset turns it on (its SAM-2 is from scratch)
    head_grads = {}
    for weight in (0.0, 1.0):
        loss = config.loss.model_copy(update={"object_weight": weight, "track_weight": 0.0})
        weighted = config.model_copy(update={"loss": loss})
        model = build_salma(weighted).model
        torch.manual_seed(0)
        batch = random_batch(weighted, batch_size=2, num_frames=2)
        out = model(batch)
        assert (out["object"].item() > 0) == (weight > 0)
        out["total"].backward()
        grads = [p.grad for p in model.sam.sam.sam_mask_decoder.pred_obj_score_head.parameters()]
        head_grads[weight] = sum(float(g.abs().sum()) for g in grads)
    assert head_grads[0.0] == 0.0 and head_grads[1.0] > 0.0
