"""SAM-2 promptable pre-training: prompts, the instance set, a few real steps, the checkpoint
round trip through the ``sam2`` package's own (strict) loader."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from salma.builder import build_salma, build_sam
from salma.config import resolve_model_config
from salma.data.errors import BadRecordError
from salma.data.sources import read_source
from salma.image_transforms import to_normalized_tensor
from salma.sam_pretraining import (
    InstanceSet,
    PretrainOptions,
    central_prompts,
    evaluate_prompts,
    instance_set,
    pretrain_sam,
    evaluate_tracking,
    prompted_logits,
    sample_instances,
    sample_prompts,
    save_sam2_checkpoint,
    track_set,
)
from salma.sam_pretraining import _average_gradients


def _masks() -> np.ndarray:
    masks = np.zeros((2, 64, 64), bool)  # (N, S, S)
    masks[0, 10:20, 5:35] = True  # x 5..34, y 10..19
    masks[1, 40:60, 40:44] = True
    return masks


def test_clicks_fall_inside_their_mask_with_the_padding_label():
    masks = _masks()
    coords, labels = sample_prompts(masks, np.random.default_rng(0), box_probability=0.0, box_noise=0.1)
    assert coords.shape == (2, 2, 2) and labels.tolist() == [[1, -1], [1, -1]]
    for mask, (x, y) in zip(masks, coords[:, 0].tolist()):
        assert mask[int(y), int(x)]


def test_boxes_are_jittered_corners_with_labels_2_and_3():
    masks = _masks()
    coords, labels = sample_prompts(masks, np.random.default_rng(0), box_probability=1.0, box_noise=0.0)
    assert labels.tolist() == [[2, 3], [2, 3]]
    assert coords[0].tolist() == [[5.0, 10.0], [35.0, 20.0]]  # exact box without noise
    noisy, _ = sample_prompts(masks, np.random.default_rng(0), box_probability=1.0, box_noise=0.1)
    shift = (noisy - coords).abs()
    assert shift.max() > 0
    assert shift.max() <= 20.0 * 64 / 1024 + 1e-6  # SAM's cap of 20 px at 1024, scaled
    assert noisy.min() >= 0 and noisy.max() <= 64


def test_an_empty_mask_is_an_error_not_a_prompt_at_the_origin():
    masks = _masks()
    masks[1] = False
    with pytest.raises(ValueError, match="mask 1 is empty"):
        sample_prompts(masks, np.random.default_rng(0), box_probability=0.5, box_noise=0.1)
    with pytest.raises(ValueError, match="mask 1 is empty"):
        central_prompts(masks)


def test_central_click_lies_inside_even_a_non_convex_mask():
    ring = np.zeros((1, 32, 32), bool)
    ring[0, 4:28, 4:28] = True
    ring[0, 10:22, 10:22] = False  # the centroid (16, 16) is a hole
    click, click_labels, box, box_labels = central_prompts(ring)
    x, y = click[0, 0].tolist()
    assert ring[0, int(y), int(x)]
    assert box[0].tolist() == [[4.0, 4.0], [28.0, 28.0]]
    assert click_labels.tolist() == [[1, -1]] and box_labels.tolist() == [[2, 3]]


def test_instance_set_has_one_mask_per_object_and_frame(synthetic_data):
    records = read_source("refcoco", synthetic_data / "refer" / "refcoco", "train")
    data = instance_set(records, image_size=64)
    objects = sum(len({tuple(r.object_ids) for r in record.referents}) for record in records)
    assert len(data.images) == len(records)
    assert len(data.masks) == objects  # several expressions of one object: one mask
    assert data.images.shape[1:] == (64, 64, 3) and data.masks.shape[1:] == (64, 64)
    assert all(m.any() for m in data.masks)
    videos = read_source("mevis", synthetic_data / "mevis", "train")
    frames = instance_set(videos, image_size=64, frames_per_video=2)
    assert len(frames.images) <= 2 * len(videos) and len(frames.masks) >= len(frames.images)


def test_instance_set_skips_a_missing_image_through_on_bad(synthetic_data, tmp_path):
    records = read_source("refcoco", synthetic_data / "refer" / "refcoco", "train")[:3]
    records[1].frames = [str(tmp_path / "gone.jpg")]
    with pytest.raises(BadRecordError, match="gone.jpg"):
        instance_set(records, image_size=64)
    seen = []
    data = instance_set(records, image_size=64, on_bad=seen.append)
    assert [err.reason for err in seen] == ["missing image file"] and len(data.images) == 2


def test_no_masks_at_all_is_a_clear_error():
    with pytest.raises(ValueError, match="no instance masks"):
        instance_set([], image_size=64)


def test_a_few_steps_train_the_decoder_and_the_checkpoint_loads_strictly(synthetic_data, tmp_path):
    config = resolve_model_config({"preset": "tiny"})
    sam = build_salma(config).model.sam
    records = read_source("refcoco", synthetic_data / "refer" / "refcoco", "train")
    data = instance_set(records, image_size=sam.image_size)
    before = {k: v.clone() for k, v in sam.sam.sam_mask_decoder.state_dict().items()}
    rows = pretrain_sam(sam, data, PretrainOptions(steps=4, batch_size=2, prompts_per_image=2, log_every=2), normalize=to_normalized_tensor)
    assert [r["step"] for r in rows] == [2, 4]
    assert all(np.isfinite(r["mask_bce"]) and 0.0 <= r["train_iou"] <= 1.0 for r in rows)
    changed = [k for k, v in sam.sam.sam_mask_decoder.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    scores = evaluate_prompts(sam, InstanceSet(data.images, data.masks[:3], data.image_index[:3]), normalize=to_normalized_tensor)
    assert set(scores) == {"click_iou", "box_iou"} and all(0.0 <= v <= 1.0 for v in scores.values())
    # max_masks scores an even spread of the set: masks 0 and 2 of three, the mean of those two.
    subset = InstanceSet(data.images, data.masks[[0, 2]], data.image_index[[0, 2]])
    assert evaluate_prompts(sam, InstanceSet(data.images, data.masks[:3], data.image_index[:3]),
                            normalize=to_normalized_tensor, max_masks=2) == pytest.approx(
        evaluate_prompts(sam, subset, normalize=to_normalized_tensor), abs=1e-6)

    path = save_sam2_checkpoint(sam, tmp_path / "sam2.pt")
    assert not (tmp_path / "sam2.pt.partial").exists()
    with_checkpoint = config.model_copy(update={"sam": config.sam.model_copy(update={"checkpoint": str(path)})})
    loaded = build_salma(with_checkpoint).model.sam
    for key, value in sam.sam.state_dict().items():
        assert torch.equal(loaded.sam.state_dict()[key], value), key


def _three_frames() -> InstanceSet:
    """Frame 0 holds masks 0 and 1, frame 1 mask 2, frame 2 masks 3, 4 and 5."""
    masks = np.zeros((6, 32, 32), bool)
    for k in range(6):
        masks[k, 4 * k : 4 * k + 3, 2:9] = True
    images = np.arange(3 * 32 * 32 * 3, dtype=np.uint8).reshape(3, 32, 32, 3)
    return InstanceSet(images, masks, np.array([0, 0, 1, 2, 2, 2]))


def test_several_prompts_per_image_take_each_frame_s_own_objects_in_turn():
    data = _three_frames()
    frames, rows, pick = sample_instances(data, np.random.default_rng(0), 24, 4)
    assert frames.shape == (6,) and pick.shape == (24,)
    assert rows.tolist() == [r for r in range(6) for _ in range(4)]
    # every prompted mask lies on the frame its row encodes ...
    assert (data.image_index[pick] == frames[rows.numpy()]).all()
    for r, frame in enumerate(frames):
        taken = pick[4 * r : 4 * r + 4].tolist()
        own = np.flatnonzero(data.image_index == frame).tolist()
        # ... and a frame's objects come in turn: each once before any repeats
        assert sorted(taken[: len(own)]) == own and taken[len(own) :] == taken[: 4 - len(own)]
    frames, rows, pick = sample_instances(data, np.random.default_rng(0), 5, 1)
    assert rows is None and (frames == data.image_index[pick]).all() and len(pick) == 5


def test_prompts_sharing_an_encoded_frame_decode_as_if_each_had_its_own_copy():
    sam = build_salma(resolve_model_config({"preset": "tiny"})).model.sam.eval()
    data = _three_frames()
    size = sam.image_size
    images = np.stack([np.resize(image, (size, size, 3)) for image in data.images])
    masks = np.stack([np.resize(mask, (size, size)) for mask in data.masks])
    coords, labels = sample_prompts(masks, np.random.default_rng(1), box_probability=0.5, box_noise=0.1)
    with torch.no_grad():
        shared = prompted_logits(sam, to_normalized_tensor(images), coords, labels, torch.from_numpy(data.image_index))
        copies = prompted_logits(sam, to_normalized_tensor(images[data.image_index]), coords, labels)
    for a, b in zip(shared, copies):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_prompts_per_image_must_divide_the_batch():
    with pytest.raises(ValueError, match="prompts_per_image=3 must be >= 1 and divide"):
        PretrainOptions(batch_size=8, prompts_per_image=3)


def test_the_best_candidate_rule_also_runs(synthetic_data):
    sam = build_salma(resolve_model_config({"preset": "tiny"})).model.sam
    records = read_source("refcoco", synthetic_data / "refer" / "refcoco", "train")
    data = instance_set(records, image_size=sam.image_size)
    rows = pretrain_sam(
        sam, data, PretrainOptions(steps=2, batch_size=2, prompts_per_image=1, log_every=1, candidates="best"), normalize=to_normalized_tensor
    )
    assert len(rows) == 2 and all(r["iou"] >= 0 for r in rows)


def _video_records(synthetic_data):
    return read_source("mevis", synthetic_data / "mevis", "train")[:6]


def test_track_set_windows_start_on_a_visible_frame_and_fit_in_the_video(synthetic_data):
    records = _video_records(synthetic_data)
    tracks = track_set(records, image_size=64)
    distinct = sum(len({tuple(sorted(r.object_ids)) for r in record.referents}) for record in records)
    assert len(tracks.videos) == len(records) and 0 < len(tracks.tracks) <= distinct
    windows = tracks.windows(4)
    assert windows and {step for _, _, step in windows} == {1, -1}
    for k, start, step in windows:
        masks = tracks.tracks[k][1]
        assert masks[start].any() and 0 <= start + 3 * step < len(masks)
    masks, frames = tracks.sample(np.random.default_rng(0), 3, 4)
    assert masks.shape == (3, 4, 64, 64) and frames.shape == (3, 4, 64, 64, 3) and masks[:, 0].any(axis=(1, 2)).all()
    k, start, step = windows[-1]
    clip_masks, _ = tracks.clip((k, start, step), 4)
    assert np.array_equal(clip_masks[1], tracks.tracks[k][1][start + step])
    with pytest.raises(ValueError, match="no video track has 99 frames"):
        tracks.sample(np.random.default_rng(0), 1, 99)


def test_track_set_skips_an_undecodable_video_through_on_bad(synthetic_data, tmp_path):
    records = _video_records(synthetic_data)[:2]
    records[0].frames = [str(tmp_path / "gone.jpg")] * records[0].num_frames
    seen = []
    tracks = track_set(records, image_size=64, on_bad=seen.append)
    assert len(seen) == 1 and "gone.jpg" in str(seen[0].path) and len(tracks.videos) == 1


def test_video_steps_train_the_memory_modules_and_the_presence_head(synthetic_data):
    sam = build_salma(resolve_model_config({"preset": "tiny"})).model.sam
    records = _video_records(synthetic_data)
    data = instance_set(records, image_size=sam.image_size)
    tracks = track_set(records, image_size=sam.image_size)
    model = sam.sam
    watched = {
        "memory_attention": model.memory_attention,
        "memory_encoder": model.memory_encoder,
        "presence_head": model.sam_mask_decoder.pred_obj_score_head,
    }
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in watched.items()}
    options = PretrainOptions(steps=1, video_steps=2, batch_size=2, prompts_per_image=2, clip_batch=2, clip_frames=3, log_every=3)
    rows = pretrain_sam(sam, data, options, normalize=to_normalized_tensor, tracks=tracks)
    assert len(rows) == 1 and rows[0]["step"] == 3
    assert {"object", "track_iou", "train_iou"} <= set(rows[0]) and np.isfinite(rows[0]["object"])
    for name, module in watched.items():
        assert any(not torch.equal(p, q) for p, q in zip(module.parameters(), before[name])), name
    score = evaluate_tracking(sam, tracks, normalize=to_normalized_tensor, clip_frames=3)
    assert 0.0 <= score <= 1.0


def test_video_steps_without_clips_is_an_error(synthetic_data):
    sam = build_salma(resolve_model_config({"preset": "tiny"})).model.sam
    data = instance_set(_video_records(synthetic_data), image_size=sam.image_size)
    with pytest.raises(ValueError, match="needs a TrackSet"):
        pretrain_sam(sam, data, PretrainOptions(steps=1, video_steps=2), normalize=to_normalized_tensor)


def test_each_phase_is_constant_then_decays_over_its_last_fraction():
    from salma.sam_pretraining import _rate

    rate = _rate(100, warmup_fraction=0.0, decay_fraction=0.2)
    assert [rate(s) for s in (0, 50, 79)] == [1.0, 1.0, 1.0]
    assert 0.0 < rate(90) < rate(81) < 1.0 and rate(99) < 0.01
    warm = _rate(100, warmup_fraction=0.1, decay_fraction=0.2)
    assert warm(0) == 0.1 and warm(9) == 1.0


def _data_parallel_rank(rank: int, folder: str, data: InstanceSet) -> None:
    """One of two spawned ranks: known gradients through ``_average_gradients``, then two
    data-parallel pre-training steps from the same initialisation; saves what it ended with."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        both, one, neither = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
        both.grad = torch.full((3,), float(rank + 1))
        one.grad = torch.full((3,), 4.0) if rank == 1 else None
        _average_gradients([both, one, neither], 2)
        torch.manual_seed(0)
        sam = build_sam(resolve_model_config({"preset": "tiny"}).sam)
        options = PretrainOptions(steps=2, batch_size=4, prompts_per_image=2, log_every=1)
        rows = pretrain_sam(sam, data, options, normalize=to_normalized_tensor, data_parallel=True)
        torch.save(
            {"grads": [both.grad, one.grad, neither.grad is None], "rows": rows, "model": sam.state_dict()},
            f"{folder}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_data_parallel_ranks_average_their_gradients_and_stay_equal(synthetic_data, tmp_path):
    records = read_source("refcoco", synthetic_data / "refer" / "refcoco", "train")
    data = instance_set(records, image_size=resolve_model_config({"preset": "tiny"}).sam.image_size)
    mp.spawn(_data_parallel_rank, args=(str(tmp_path), data), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for saved in ranks:
        both, one, neither_is_none = saved["grads"]
        assert torch.equal(both, torch.full((3,), 1.5))  # (1 + 2) / 2
        assert torch.equal(one, torch.full((3,), 2.0))  # a rank without it counts as zero: (0 + 4) / 2
        assert neither_is_none  # used on no rank: left None, as the optimizer then skips it
    assert ranks[0]["rows"] == ranks[1]["rows"] and [r["step"] for r in ranks[0]["rows"]] == [1, 2]
    torch.manual_seed(0)
    initial = build_sam(resolve_model_config({"preset": "tiny"}).sam).state_dict()
    changed = [k for k, v in ranks[0]["model"].items() if not torch.equal(v, initial[k])]
    assert changed
    for key, value in ranks[0]["model"].items():
        assert torch.equal(ranks[1]["model"][key], value), key


def test_data_parallel_needs_a_process_group():
    data = _three_frames()
    with pytest.raises(RuntimeError, match="process group"):
        pretrain_sam(torch.nn.Module(), data, PretrainOptions(steps=1, batch_size=2), normalize=to_normalized_tensor,
                     data_parallel=True)
