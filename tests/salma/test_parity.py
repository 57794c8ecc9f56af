"""Parity with the wrapped packages: our wrappers must not change what they wrap."""

import torch

from salma.builder import build_salma
from salma.config import resolve_model_config
from salma.testing import random_batch, tiny_salma_config


def test_mllm_wrapper_logits_equal_the_raw_transformers_model():
    built = build_salma(tiny_salma_config())
    model = built.model.eval()
    batch = random_batch(built.config, batch_size=2, num_frames=2, tokenizer=built.tokenizer)
    with torch.no_grad():
        ours = model.mllm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values)
        raw = model.mllm.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values
        )
    assert torch.equal(ours.logits, raw.logits)


def test_sam_adapter_without_language_matches_the_sam2_package():
    """No language, MBA off: our decode equals SAM2Base._forward_sam_heads on the same weights."""
    model = build_salma(resolve_model_config({"preset": "tiny", "mba": {"enabled": False}})).model.eval()
    sam = model.sam.sam
    images = torch.randn(3, 3, sam.image_size, sam.image_size)
    with torch.no_grad():
        features = model.sam.encode(images)
        ours = model.sam.decode(features.image_embed, features.high_res, None, suppress_no_object=True)
        # The package's own single-image path: backbone → features + no-memory embedding → heads.
        backbone_out = sam.forward_image(images)
        _, vision_feats, _, sizes = sam._prepare_backbone_features(backbone_out)
        pix = vision_feats[-1] + sam.no_mem_embed
        pix = pix.permute(1, 2, 0).view(3, -1, *sizes[-1])
        high_res = [f.permute(1, 2, 0).view(3, -1, *s) for f, s in zip(vision_feats[:-1], sizes[:-1])]
        ref = sam._forward_sam_heads(backbone_features=pix, high_res_features=high_res, multimask_output=True)
    low_res_multimasks, _, ious, low_res_masks, *_ = ref
    assert torch.equal(ours.multimasks, low_res_multimasks)
    assert torch.equal(ours.ious, ious)
    assert torch.equal(ours.masks, low_res_masks)


def test_prior_is_the_best_mask_resized_to_the_feature_map_and_detached():
    model = build_salma(tiny_salma_config()).model
    images = torch.randn(2, 3, model.sam.image_size, model.sam.image_size)
    features = model.sam.encode(images)
    prior = model.sam.prior(features)
    h, w = features.image_embed.shape[-2:]
    assert prior.shape == (2, 1, h, w) and not prior.requires_grad


def test_sam_adapter_track_matches_the_packages_video_predictor():
    """``SamAdapter.track`` (batched clips, for training) against ``add_new_mask`` +
    ``propagate_in_video`` on one clip: the same tracked masks and object scores."""
    from salma.predictor import init_tracking_state

    torch.manual_seed(0)
    model = build_salma(tiny_salma_config()).model
    adapter = model.sam.eval()
    size = adapter.image_size
    frames = torch.randn(3, 3, size, size)
    first = torch.zeros(size, size, dtype=torch.bool)
    first[30:90, 40:100] = True
    encodings = []
    hook = adapter.sam.memory_encoder.register_forward_hook(lambda *_: encodings.append(1))
    with torch.no_grad():
        tracked = adapter.track(adapter.sam.forward_image(frames), torch.arange(3)[None], first[None])
    hook.remove()
    assert len(encodings) == 2, "memories of frames 0 and 1; the last frame's would serve no later frame"
    with torch.no_grad():
        state = init_tracking_state(adapter.sam, frames, size, size)
        adapter.sam.add_new_mask(state, frame_idx=0, obj_id=0, mask=first)
        package = {t: masks[0, 0] for t, _, masks in adapter.sam.propagate_in_video(state, start_frame_idx=0)}
    assert len(tracked) == 2
    assert any(out.object_score[0, 0] > 0 for out in tracked), "the comparison would only see emptied frames"
    for t, out in enumerate(tracked, start=1):
        ours = adapter.upscale(out.masks, (size, size))[0, 0]
        if out.object_score[0, 0] <= 0:  # the package empties frames it calls absent
            ours = torch.full_like(ours, -1024.0)
        torch.testing.assert_close(ours, package[t], atol=1e-4, rtol=1e-4)
