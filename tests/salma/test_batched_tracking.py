"""Batched tracking (``salma.batched_tracking``) against the ``sam2`` package's per-object
``propagate_in_video`` on the tiny SAM-2, and the number of memory-attention, mask-decoder and
memory-encoder forwards per frame, counted with forward hooks.

A batch of S objects through the same kernels is not bit-identical to S batches of one on CPU
(float32 rounding of batched matrix products: at most ~1e-7 on these logits, where two objects'
logits differ by more than 1e-5), so the mask logits are compared within ``LOGIT_TOLERANCE`` and
the thresholded masks exactly. A pixel whose logit lies within that rounding of 0 can flip; none
does on this data.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from salma.batched_tracking import propagate_batched, propagate_key_masks_batched, unbatchable_settings
from salma.builder import build_salma
from salma.image_transforms import resize_square, to_normalized_tensor
from salma.predictor import SalmaPredictor, init_tracking_state, propagate_key_masks
from salma.testing import random_sample, tiny_salma_config

LOGIT_TOLERANCE = 1e-6  # observed: at most ~1e-7 (float32 rounding of batched products)
NUM_FRAMES, HEIGHT, WIDTH = 7, 72, 100


@pytest.fixture(scope="module")
def built():
    return build_salma(tiny_salma_config())


@pytest.fixture(scope="module")
def model(built):
    return built.model


@pytest.fixture(scope="module")
def sam(model):
    return model.sam.sam.eval()


@pytest.fixture(scope="module")
def images(sam):
    frames, _, _ = random_sample(np.random.default_rng(0), num_frames=NUM_FRAMES, num_objects=3,
                                 height=HEIGHT, width=WIDTH)
    return to_normalized_tensor([resize_square(f, sam.image_size) for f in frames])


def _seeds(sam, num_objects: int, keys: list[int]) -> torch.Tensor:
    """(S, K, 4h, 4w) key-frame masks: a rectangle per object and key frame, one of them empty
    (an object absent from a key frame takes SAM-2's no-object path)."""
    rng = np.random.default_rng(len(keys))
    size = sam.image_size // 4
    masks = torch.zeros(num_objects, len(keys), size, size, dtype=torch.bool)
    for s in range(num_objects):
        for j in range(len(keys)):
            y, x = rng.integers(0, size // 2, size=2)
            h, w = rng.integers(size // 6, size // 2, size=2)
            masks[s, j, y : y + h, x : x + w] = True
    masks[-1, -1] = False
    return masks


def _package_logits(sam, images, keys, seeds) -> dict[int, torch.Tensor]:
    state = init_tracking_state(sam, images, HEIGHT, WIDTH)
    for s in range(seeds.shape[0]):
        for j, t in enumerate(keys):
            sam.add_new_mask(state, frame_idx=t, obj_id=s, mask=seeds[s, j])
    logits = {}
    for reverse in [False] + ([True] if keys[0] > 0 else []):
        for t, _, masks in sam.propagate_in_video(state, start_frame_idx=keys[0], reverse=reverse):
            logits[t] = masks.clone()
    return logits


@pytest.mark.parametrize("keys", [[0, 3, 6], [2, 5]], ids=["forwards", "forwards_and_backwards"])
@torch.no_grad()
def test_batched_tracking_gives_the_packages_per_object_masks(sam, images, keys):
    seeds = _seeds(sam, 3, keys)
    theirs = _package_logits(sam, images, keys, seeds)
    ours = {t: logits.clone() for t, logits in propagate_batched(sam, init_tracking_state(sam, images, HEIGHT, WIDTH),
                                                                   keys, seeds)}
    assert sorted(ours) == sorted(theirs) == list(range(NUM_FRAMES))
    for t in range(NUM_FRAMES):
        assert ours[t].shape == theirs[t].shape == (3, 1, HEIGHT, WIDTH)
        assert (ours[t] - theirs[t]).abs().max().item() <= LOGIT_TOLERANCE, f"frame {t}"
        assert torch.equal(ours[t] > 0, theirs[t] > 0), f"frame {t}: masks differ"
    # The comparison covers tracked masks, not only empty ones, of objects whose logits differ by
    # far more than the tolerance (objects mixed up within the batch would show).
    tracked = [t for t in range(NUM_FRAMES) if t not in keys]
    assert all((ours[t] > 0).any() for t in tracked)
    for t in tracked:
        assert min((ours[t][a] - ours[t][b]).abs().max().item() for a, b in [(0, 1), (0, 2), (1, 2)]) > 10 * LOGIT_TOLERANCE
    video = propagate_key_masks_batched(sam, init_tracking_state(sam, images, HEIGHT, WIDTH), keys, seeds)
    package = propagate_key_masks(sam, init_tracking_state(sam, images, HEIGHT, WIDTH), keys, seeds)
    assert video.shape == (3, NUM_FRAMES, HEIGHT, WIDTH) and video.dtype == bool
    assert np.array_equal(video, package)


@contextmanager
def _counting(modules: dict[str, torch.nn.Module]):
    """Forward calls per module, and the batch size of each call."""
    calls: dict[str, list[int]] = {name: [] for name in modules}
    hooks = []
    for name, module in modules.items():
        def hook(_module, args, kwargs, _out, name=name):
            first = args[0] if args else next(iter(kwargs.values()))
            if isinstance(first, (list, tuple)):  # memory attention takes [(HW, B, C)]
                calls[name].append(first[0].shape[1])
            else:
                calls[name].append(first.shape[0])
        hooks.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        yield calls
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def test_each_frame_runs_memory_attention_decoder_and_memory_encoder_once_for_all_objects(sam, images):
    keys, num_objects = [2, 5], 4
    seeds = _seeds(sam, num_objects, keys)
    modules = {"memory_attention": sam.memory_attention, "mask_decoder": sam.sam_mask_decoder,
               "memory_encoder": sam.memory_encoder}
    tracked = NUM_FRAMES - len(keys)
    with _counting(modules) as batched:
        propagate_key_masks_batched(sam, init_tracking_state(sam, images, HEIGHT, WIDTH), keys, seeds)
    # Tracked frames: memory attention, decoder and memory encoder once each. Key frames: the
    # decoder once (the object pointer of the given mask) and the memory encoder once.
    assert batched == {
        "memory_attention": [num_objects] * tracked,
        "mask_decoder": [num_objects] * NUM_FRAMES,
        "memory_encoder": [num_objects] * NUM_FRAMES,
    }
    with _counting(modules) as per_object:
        propagate_key_masks(sam, init_tracking_state(sam, images, HEIGHT, WIDTH), keys, seeds)
    assert per_object == {
        "memory_attention": [1] * (num_objects * tracked),
        "mask_decoder": [1] * (num_objects * NUM_FRAMES),
        "memory_encoder": [1] * (num_objects * NUM_FRAMES),
    }


@torch.no_grad()
def test_no_objects_give_an_empty_video(sam, images):
    video = propagate_key_masks_batched(sam, init_tracking_state(sam, images, HEIGHT, WIDTH), [0, 3],
                                        torch.zeros(0, 2, 32, 32, dtype=torch.bool))
    assert video.shape == (0, NUM_FRAMES, HEIGHT, WIDTH)


def test_settings_that_couple_the_objects_are_refused(sam, images, monkeypatch):
    assert unbatchable_settings(sam) == []
    monkeypatch.setattr(sam, "non_overlap_masks_for_mem_enc", True)
    assert unbatchable_settings(sam) == ["non_overlap_masks_for_mem_enc=True"]
    with pytest.raises(ValueError, match="non_overlap_masks_for_mem_enc.*propagate_key_masks"):
        propagate_key_masks_batched(sam, init_tracking_state(sam, images, HEIGHT, WIDTH), [0], _seeds(sam, 2, [0]))


def test_key_masks_must_match_the_key_frames(sam, images):
    with pytest.raises(ValueError, match="K=2"):
        propagate_key_masks_batched(sam, init_tracking_state(sam, images, HEIGHT, WIDTH), [0, 3], _seeds(sam, 2, [0]))
    with pytest.raises(ValueError, match="ascending"):
        propagate_key_masks_batched(sam, init_tracking_state(sam, images, HEIGHT, WIDTH), [3, 0],
                                    _seeds(sam, 2, [3, 0]))


def test_predictor_tracks_all_objects_in_one_batch_and_falls_back_where_the_batch_would_differ(built, monkeypatch):
    model = built.model
    frames, _, expressions = random_sample(np.random.default_rng(1), num_frames=5, num_objects=2,
                                           height=HEIGHT, width=WIDTH)
    predictor = SalmaPredictor(built, num_key_frames=2)
    modules = {"memory_attention": model.sam.sam.memory_attention}
    with _counting(modules) as batched:
        together = predictor.segment_expressions(np.stack(frames), expressions, generate=False)
    assert batched["memory_attention"] == [2] * 3  # frames 1-3 tracked, both objects at once
    monkeypatch.setattr(model.sam.sam, "non_overlap_masks_for_mem_enc", True)
    with _counting(modules) as per_object:
        apart = predictor.segment_expressions(np.stack(frames), expressions, generate=False)
    assert per_object["memory_attention"] == [1] * 6
    for a, b in zip(together, apart):
        assert len(a.masks) == len(b.masks) == 1 and np.array_equal(a.masks[0], b.masks[0])
