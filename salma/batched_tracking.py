"""SAM-2 video tracking of all objects of a record together: one batch of S objects per frame.

The ``sam2`` package's video predictor (``SAM2VideoPredictor.propagate_in_video``) keeps one
memory bank per object and runs ``track_step`` — memory attention, mask decoder, memory encoder —
object by object on every frame (``_run_single_frame_inference`` with a batch of one). When every
object is seeded with a mask on the same key frames, as the predictor does, the objects share
everything that decides the layout of a memory bank: the same conditioning frames, the same
non-conditioning frames (every tracked frame), hence the same memory and object-pointer
positions. Their banks can then be held as one bank with a batch dimension of S, and each frame
goes through ``track_step`` once for all S objects. Nothing of SAM-2 is re-implemented: each
step is the package's own ``_run_single_frame_inference`` / ``_run_memory_encoder`` called with a
batch size of S (the frame's backbone features are computed once and expanded to S by the
package's ``_get_image_feature``), in the order ``add_new_mask`` then ``propagate_in_video``
(forwards from the first key frame, then backwards from it when it is not frame 0) would run
them.

Objects never interact in the package's per-object tracking, so the batch changes nothing but
float rounding of batched kernels (about 1e-7 on the logits in float32 on CPU);
``unbatchable_settings`` names the SAM-2 settings under which that no longer holds
(memory-encoder non-overlap couples the objects of a batch), and the predictor falls back to the
per-object path there.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def unbatchable_settings(sam) -> list[str]:
    """The settings of the SAM-2 video predictor ``sam`` under which tracking the objects as one
    batch would not give the per-object result (empty: the batch gives it up to float rounding)."""
    reasons = []
    if getattr(sam, "non_overlap_masks_for_mem_enc", False):
        # _encode_new_memory applies non-overlap across the batch dimension: with a batch of one
        # object per call (the package's tracker) it is a no-op, with S objects it is not.
        reasons.append("non_overlap_masks_for_mem_enc=True")
    if getattr(sam, "clear_non_cond_mem_around_input", False):
        # The package clears memories around each input frame object by object; not mirrored here.
        reasons.append("clear_non_cond_mem_around_input=True")
    return reasons


@torch.no_grad()
def propagate_key_masks_batched(sam, state: dict, keys: list[int], key_masks: torch.Tensor) -> np.ndarray:
    """Track S objects seeded with the masks ``key_masks`` (S, K, h, w) bool on the ascending key
    frames ``keys``, as one batch per frame. Same result as ``salma.predictor.propagate_key_masks``
    (the package's per-object ``propagate_in_video``): (S, T, video height, video width) bool.

    ``state``: a tracking state with no objects added (``salma.predictor.init_tracking_state``);
    it serves the frames' features and the cached memory position encoding, and its per-object
    entries stay empty.
    """
    num_objects = key_masks.shape[0]
    video = np.zeros((num_objects, state["num_frames"], state["video_height"], state["video_width"]), dtype=bool)
    for t, logits in propagate_batched(sam, state, keys, key_masks):
        video[:, t] = (logits[:, 0] > 0).cpu().numpy()
    return video


@torch.no_grad()
def propagate_batched(sam, state: dict, keys: list[int], key_masks: torch.Tensor):
    """The frames in the order ``propagate_in_video`` yields them (forwards from the first key
    frame, then backwards from it when it is not frame 0), each as ``(frame index, (S, 1, video
    height, video width) mask logits)`` of all S objects (``propagate_key_masks_batched``)."""
    reasons = unbatchable_settings(sam)
    if reasons:
        raise ValueError(
            f"batched tracking would change the results with {', '.join(reasons)}; "
            "use salma.predictor.propagate_key_masks (per-object tracking) for this SAM-2 config"
        )
    if key_masks.dim() != 4 or key_masks.shape[1] != len(keys):
        raise ValueError(f"key_masks must be (S, K={len(keys)}, h, w), got {tuple(key_masks.shape)}")
    if not keys or list(keys) != sorted(set(keys)):
        raise ValueError(f"key frames must be ascending and distinct, got {keys}")
    num_objects = key_masks.shape[0]
    if num_objects == 0:
        return
    # One memory bank for all objects, laid out as the package lays out each object's
    # ("output_dict_per_obj"): every tensor in it has a leading batch dimension of S.
    bank: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    for j, t in enumerate(keys):
        bank["cond_frame_outputs"][t] = _seed(sam, state, t, key_masks[:, j])
    for t, out in bank["cond_frame_outputs"].items():
        _encode_seed_memory(sam, state, t, out, num_objects)
    for reverse in [False] + ([True] if keys[0] > 0 else []):
        order = range(keys[0], -1, -1) if reverse else range(keys[0], state["num_frames"])
        for t in order:
            if t in bank["cond_frame_outputs"]:
                pred_masks = bank["cond_frame_outputs"][t]["pred_masks"].to(state["device"], non_blocking=True)
            else:
                out, pred_masks = sam._run_single_frame_inference(
                    inference_state=state,
                    output_dict=bank,
                    frame_idx=t,
                    batch_size=num_objects,
                    is_init_cond_frame=False,
                    point_inputs=None,
                    mask_inputs=None,
                    reverse=reverse,
                    run_mem_encoder=True,
                )
                bank["non_cond_frame_outputs"][t] = out
            _, video_res = sam._get_orig_video_res_output(state, pred_masks)  # (S, 1, H, W)
            yield t, video_res


def _seed(sam, state: dict, frame_idx: int, masks: torch.Tensor) -> dict:
    """``add_new_mask`` for S objects on one key frame: the masks (S, h, w) bool resized to
    SAM-2's input size as the package does, then one conditioning step with the masks as input
    (no memory encoding yet: the package runs it when propagation starts)."""
    inputs = masks[:, None].float().to(state["device"])  # (S, 1, h, w)
    if inputs.shape[-2:] != (sam.image_size, sam.image_size):
        inputs = F.interpolate(inputs, size=(sam.image_size, sam.image_size), align_corners=False,
                               mode="bilinear", antialias=True)
        inputs = (inputs >= 0.5).float()
    out, _ = sam._run_single_frame_inference(
        inference_state=state,
        output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},  # nothing tracked yet
        frame_idx=frame_idx,
        batch_size=inputs.shape[0],
        is_init_cond_frame=True,
        point_inputs=None,
        mask_inputs=inputs,
        reverse=False,
        run_mem_encoder=False,
    )
    return out


def _encode_seed_memory(sam, state: dict, frame_idx: int, out: dict, num_objects: int) -> None:
    """``propagate_in_video_preflight`` for one key frame's outputs: its memory, encoded from the
    stored low-resolution mask upsampled to the input size, as a user-given mask."""
    high_res = F.interpolate(out["pred_masks"].to(state["device"]), size=(sam.image_size, sam.image_size),
                             mode="bilinear", align_corners=False)
    out["maskmem_features"], out["maskmem_pos_enc"] = sam._run_memory_encoder(
        inference_state=state,
        frame_idx=frame_idx,
        batch_size=num_objects,
        high_res_masks=high_res,
        object_score_logits=out["object_score_logits"],
        is_mask_from_pts=True,
    )
