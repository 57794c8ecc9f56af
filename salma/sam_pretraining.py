"""Promptable-segmentation pre-training of a SAM-2 built from scratch: what a checkpoint brings.

The real presets load a SAM-2 checkpoint trained on SA-1B / SA-V with point and box prompts, so
their mask decoder already turns a prompt into a location before SALMA training starts, and the
language prompt only has to learn to speak that decoder's language. The ``tiny`` preset is built
with random weights; trained jointly with a random MLLM its decoder does not learn to localise
(even the referent's true centre given as a point prompt stays at chance), so it is pre-trained
here first.

This module trains the tiny SAM-2 the way SAM-2 itself is trained, on class-agnostic instance
masks with no language (every object of the training images, whatever the expressions say):

- prompts (``sample_prompts``): one positive click drawn uniformly inside the mask, or the
  mask's box with each corner moved by noise of std ``box_noise`` times the box side (SAM's own
  box jitter, 0.1, at most 20 px), encoded as SAM-2 does as two points with labels 2 and 3;
- multimask output (the mode SALMA decodes in), BCE and Dice on every pixel
  (``salma.losses.dense_bce_dice_per_mask``; BCE stands in for SAM-2's focal loss, as in SALMA's
  own mask loss); ``candidates="all"`` (the default) trains every candidate towards the prompted
  object, ``"best"`` only the best one (SAM-2's rule); an optional L1 IoU-head loss
  (``iou_weight``, SAM-2's ``iou_use_l1_loss``);
- image encoder, prompt encoder and mask decoder all train;
- one prompt per frame by default; with ``prompts_per_image`` > 1 (``sample_instances``) a batch
  of ``batch_size`` prompts encodes ``batch_size / prompts_per_image`` frames once and prompts
  each frame's objects in turn (SAM-2's own training also decodes many prompts per encoded
  image). The decoder then leaves the plateau below about three times earlier in steps (32
  prompts on 8 frames: step 600-700 in 3 seeds, against 2000-2400 for 8 prompts on 8 frames) for
  about 1.2x the time of a step. But SALMA trained on the result scored 2-4 points lower in
  the quickstart when the shorter run let the image encoder see fewer frames, and about as well
  only with as many frames as the default (which costs the time back), so it is not the default;
- then, with ``video_steps`` (and a ``TrackSet``), SAM-2's video training (``tracked_loss``):
  clips of ``clip_frames`` consecutive frames of one object track, forwards or backwards in time;
  the first frame is a conditioning frame given its ground-truth mask (as SALMA seeds the tracker
  with its key-frame masks), the others are tracked through the package's own ``track_step``
  (memory attention over the earlier frames' memories and object pointers, then the decoder with
  no prompt), with the same dense loss on every candidate plus SAM-2's object-presence BCE.
  Clip batches alternate with image batches (which then also take the presence loss, target 1),
  so the memory attention, the memory encoder, the object pointers and the presence head train
  while the prompted decoder keeps what it learned.

From scratch, the decoder first learns to segment *every* object whatever the prompt (a click
and a box then give the same masks) and only after a plateau starts to follow the prompt; the
tracker plateaus the same way before it turns. The defaults (every candidate trained, dense
loss, no IoU-head loss, no warm-up, a constant rate that decays only over the last
``decay_fraction``, and a schedule of its own for the video phase) are the settings under which
both get past their plateau; the measurements behind them are in
docs/experiments/2026-12-03-sam2-pretraining-and-tracking.md and
docs/experiments/2026-12-07-quickstart-time-budget.md.

``save_sam2_checkpoint`` writes the package's own checkpoint layout (``{"model": state_dict}``),
so the result loads through ``sam.checkpoint`` with the package's strict loader, exactly as a
downloaded SAM-2.1 checkpoint does. Simplified against SAM-2's recipe: no iterative correction
clicks, one conditioning frame per clip (always a mask, never clicks), clips of 4 frames instead
of 8, no occlusion-heavy data (the synthetic objects never leave the frame, so the presence head
learns "present"), a much shorter schedule.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from salma import losses
from salma.config import PretrainOptions
from salma.data.decode import decode_masks, load_frames
from salma.data.errors import BadRecordError
from salma.data.record import SampleRecord
from salma.image_transforms import resize_masks, resize_square
from salma.sam_adapter import NO_OBJECT_SCORE, SamAdapter

logger = logging.getLogger(__name__)

BOX_NOISE_MAX_PX = 20.0  # SAM's box jitter (PretrainOptions.box_noise) is at most 20 px (at SAM's 1024 px input; scaled to the input size)


@dataclass
class InstanceSet:
    """Images resized to the SAM input and the instance masks on them.

    ``images``: (N, S, S, 3) uint8; ``masks``: (M, S, S) bool, each non-empty; ``image_index``:
    (M,) the image of each mask.
    """

    images: np.ndarray
    masks: np.ndarray
    image_index: np.ndarray

    def __post_init__(self) -> None:
        if len(self.masks) == 0:
            raise ValueError("no instance masks to pre-train SAM-2 on (every mask was empty or missing)")
        if len(self.masks) != len(self.image_index):
            raise ValueError(f"{len(self.masks)} masks but {len(self.image_index)} image indices")


def instance_set(
    records: list[SampleRecord],
    *,
    image_size: int,
    frames_per_video: int = 3,
    on_bad: Callable[[BadRecordError], None] | None = None,
) -> InstanceSet:
    """Every distinct object mask of ``records`` (images, and up to ``frames_per_video`` evenly
    spaced frames of each video), resized to the ``image_size`` square SAM-2 input.

    Referents naming the same objects (several expressions of one object) give one mask; masks
    that are missing or empty on a frame (or vanish in the resize) are left out. A record whose
    frames or masks do not decode is skipped and passed to ``on_bad`` (raised when it is None).
    """
    images, masks, image_index = [], [], []
    for record in records:
        if record.num_frames == 0 or not record.referents:
            continue
        count = min(frames_per_video, record.num_frames)
        positions = sorted({round(i * (record.num_frames - 1) / max(1, count - 1)) for i in range(count)})
        try:
            frames, per_frame = _decode_instances(record, positions, image_size)
        except BadRecordError as err:
            if on_bad is None:
                raise
            on_bad(err)
            continue
        for frame, frame_masks in zip(frames, per_frame):
            if frame_masks:
                images.append(resize_square(frame, image_size))
                masks.extend(frame_masks)
                image_index.extend([len(images) - 1] * len(frame_masks))
    shape = (0, image_size, image_size)
    return InstanceSet(
        images=np.stack(images) if images else np.zeros((*shape, 3), np.uint8),
        masks=np.stack(masks) if masks else np.zeros(shape, bool),
        image_index=np.asarray(image_index, np.int64),
    )


def _decode_instances(
    record: SampleRecord, positions: list[int], image_size: int
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """The frames at ``positions`` and, per frame, the distinct non-empty object masks on it."""
    frames, tracks = _decode_tracks(record, positions, image_size)
    per_frame = [[track[t] for track in tracks if track[t].any()] for t in range(len(positions))]
    return frames, per_frame


def _decode_tracks(
    record: SampleRecord, positions: list[int], image_size: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The frames at ``positions`` and one (T, S, S) mask stack per distinct referent (referents
    naming the same objects count once), resized to the ``image_size`` square."""
    frames = load_frames(record, positions)
    seen: set[tuple[int, ...]] = set()
    tracks = []
    for referent in record.referents:
        key = tuple(sorted(referent.object_ids))
        if key not in seen:
            seen.add(key)
            decoded = decode_masks(referent, positions, record.height, record.width)  # (T, H, W)
            tracks.append(resize_masks(decoded, image_size))
    return frames, tracks


@dataclass
class TrackSet:
    """Videos resized to the SAM input and the object tracks on them, for SAM-2's memory training.

    ``videos``: (T_v, S, S, 3) uint8 per video; ``tracks``: (video index, (T_v, S, S) bool masks)
    per distinct referent. A clip is ``clip_frames`` consecutive frames of one track, forwards or
    backwards in time, starting on a frame where the object is visible (its mask is the clip's
    conditioning input, as a key-frame mask seeds SALMA's tracker at inference).
    """

    videos: list[np.ndarray]
    tracks: list[tuple[int, np.ndarray]]
    _windows: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict, repr=False, compare=False)

    def windows(self, clip_frames: int) -> list[tuple[int, int, int]]:
        """Every (track, start frame, direction ±1) whose clip fits in the video and whose first
        frame shows the object (computed once per clip length)."""
        if clip_frames not in self._windows:
            self._windows[clip_frames] = self._find_windows(clip_frames)
        return self._windows[clip_frames]

    def _find_windows(self, clip_frames: int) -> list[tuple[int, int, int]]:
        out = []
        for k, (_, masks) in enumerate(self.tracks):
            count = len(masks)
            for start in range(count):
                if not masks[start].any():
                    continue
                for step in (1, -1):
                    if 0 <= start + step * (clip_frames - 1) < count:
                        out.append((k, start, step))
        return out

    def clip(self, window: tuple[int, int, int], clip_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """(T, S, S) masks and (T, S, S, 3) frames of one window."""
        k, start, step = window
        video, masks = self.tracks[k]
        frames = [start + step * i for i in range(clip_frames)]
        return masks[frames], self.videos[video][frames]

    def sample(self, rng: np.random.Generator, count: int, clip_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` random clips: (N, T, S, S) masks and (N, T, S, S, 3) frames."""
        windows = self.windows(clip_frames)
        if not windows:
            raise ValueError(f"no video track has {clip_frames} frames with the object visible on the first")
        picked = [self.clip(windows[i], clip_frames) for i in rng.integers(len(windows), size=count)]
        return np.stack([m for m, _ in picked]), np.stack([f for _, f in picked])


def track_set(
    records: list[SampleRecord],
    *,
    image_size: int,
    min_frames: int = 2,
    on_bad: Callable[[BadRecordError], None] | None = None,
) -> TrackSet:
    """Every distinct referent track of the video ``records`` with at least ``min_frames``
    frames, all frames resized to the ``image_size`` square SAM-2 input. Tracks visible on no
    frame are left out; a record that does not decode goes to ``on_bad`` (raised when None)."""
    videos, tracks = [], []
    for record in records:
        if record.num_frames < max(2, min_frames) or not record.referents:
            continue
        try:
            frames, masks = _decode_tracks(record, list(range(record.num_frames)), image_size)
        except BadRecordError as err:
            if on_bad is None:
                raise
            on_bad(err)
            continue
        visible = [m for m in masks if m.any()]
        if visible:
            videos.append(np.stack([resize_square(f, image_size) for f in frames]))
            tracks.extend((len(videos) - 1, m) for m in visible)
    return TrackSet(videos=videos, tracks=tracks)


def sample_instances(
    data: InstanceSet, rng: np.random.Generator, batch_size: int, prompts_per_image: int
) -> tuple[np.ndarray, torch.Tensor | None, np.ndarray]:
    """The frames to encode, the frame of each prompt, and the ``batch_size`` masks to prompt.

    ``prompts_per_image`` 1: ``batch_size`` masks drawn at random, each on its own frame (rows
    None). Above 1: ``batch_size / prompts_per_image`` frames drawn at random, each encoded once
    and prompted ``prompts_per_image`` times, its objects taken in a random order and repeated
    when it has fewer (SAM-2's training also decodes many prompts per encoded image).
    Returns (I,) frame indices into ``data.images``, (B,) row of each mask among those I frames
    (or None) and (B,) mask indices into ``data.masks``.
    """
    if prompts_per_image == 1:
        pick = rng.integers(len(data.masks), size=batch_size)
        return data.image_index[pick], None, pick
    order = np.argsort(data.image_index, kind="stable")
    starts = np.searchsorted(data.image_index[order], np.arange(len(data.images) + 1))
    frames = rng.integers(len(data.images), size=batch_size // prompts_per_image)
    pick = np.concatenate(
        [np.resize(rng.permutation(order[starts[f] : starts[f + 1]]), prompts_per_image) for f in frames]
    )
    rows = torch.arange(len(frames)).repeat_interleave(prompts_per_image)
    return frames, rows, pick


def sample_prompts(masks: np.ndarray, rng: np.random.Generator, *, box_probability: float, box_noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM-style prompts for (N, S, S) non-empty boolean masks.

    Returns coords (N, 2, 2) as (x, y) pixels of the S x S input and labels (N, 2) int32: a click
    is ``[(x, y), pad]`` with labels ``[1, -1]`` (SAM-2's padding point), a box
    ``[(x0, y0), (x1, y1)]`` with labels ``[2, 3]``.
    """
    n, size = masks.shape[0], masks.shape[-1]
    coords = np.zeros((n, 2, 2), np.float32)
    labels = np.zeros((n, 2), np.int32)
    max_noise = BOX_NOISE_MAX_PX * size / 1024.0
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            raise ValueError(f"mask {i} is empty: it gives no prompt")
        if rng.random() < box_probability:
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)  # (x0, y0, x1, y1)
            side = np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float32)
            noise = np.clip(rng.normal(0.0, 1.0, 4) * box_noise * side, -max_noise, max_noise)
            box = np.clip(box + noise, 0.0, float(size))
            coords[i] = box.reshape(2, 2)
            labels[i] = (2, 3)
        else:
            k = int(rng.integers(len(xs)))
            coords[i, 0] = (xs[k] + 0.5, ys[k] + 0.5)  # pixel centre
            labels[i] = (1, -1)
    return torch.from_numpy(coords), torch.from_numpy(labels)


def prompted_logits(
    sam: SamAdapter,
    pixel_values: torch.Tensor,
    coords: torch.Tensor,
    labels: torch.Tensor,
    image_rows: torch.Tensor | None = None,
):
    """Multimask decode of N prompts → (N, M, 4h, 4w) logits, (N, M) predicted IoUs and (N, 1)
    object-presence logits, through the package's prompt encoder and mask decoder.

    ``pixel_values``: (I, 3, S, S) frames, each encoded once; ``image_rows``: (N,) the frame of
    each prompt (None: one prompt per frame, N = I).
    """
    features = sam.encode(pixel_values)
    if image_rows is not None:
        features = features.select(image_rows)
    prompt_encoder = sam.sam.sam_prompt_encoder
    sparse, dense = prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    multimasks, ious, _, object_score = sam.sam.sam_mask_decoder(
        image_embeddings=features.image_embed,
        image_pe=prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
        repeat_image=False,
        high_res_features=features.high_res,
    )
    return multimasks, ious, object_score


def pretrain_sam(
    sam: SamAdapter,
    data: InstanceSet,
    options: PretrainOptions,
    *,
    normalize,
    tracks: "TrackSet | None" = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
    data_parallel: bool = False,
) -> list[dict[str, float]]:
    """Train ``sam`` in place on ``data`` (and, for ``options.video_steps``, on the clips of
    ``tracks``); returns the logged rows (step, loss terms, train IoU: the IoU of the candidate
    inference would keep, ``track_iou`` the same on tracked clip frames, each averaged over the
    last ``log_every`` steps).

    ``normalize`` maps (B, S, S, 3) uint8 to (B, 3, S, S) model input (the ImageNet
    normalisation of ``salma.image_transforms.to_normalized_tensor``). ``on_log`` is called with
    each row as it is logged (a benchmark scores held-out prompts there).

    ``data_parallel``: this process is one rank of the initialised default ``torch.distributed``
    group (every rank calls this with the same model, data and options). Each rank draws its
    ``batch_size / world`` prompts (and ``clip_batch / world`` clips) from its own random stream
    (``[seed, rank]``), the gradients are averaged over the ranks before clipping and the
    optimizer step, and the logged rows are averaged over the ranks; the parameters stay equal on
    every rank. Without it (or in a group of one), one process draws the whole batch from
    ``seed``, as before.
    """
    o = options
    world, rank = _world_and_rank() if data_parallel else (1, 0)
    if data.images.shape[1] != sam.image_size:
        raise ValueError(f"images are {data.images.shape[1]} px but the SAM-2 input is {sam.image_size} px")
    if o.video_steps and tracks is None:
        raise ValueError(f"video_steps={o.video_steps} needs a TrackSet of video clips (tracks=None)")
    if o.batch_size % (world * o.prompts_per_image) or (o.video_steps and o.clip_batch % world):
        raise ValueError(
            f"{world} processes need batch_size={o.batch_size} divisible by processes x prompts_per_image "
            f"({world} x {o.prompts_per_image})" + (f" and clip_batch={o.clip_batch} by {world}" if o.video_steps else "")
        )
    batch_size, clip_batch = o.batch_size // world, o.clip_batch // world
    rng = np.random.default_rng(o.seed if world == 1 else [o.seed, rank])
    params = [p for p in sam.parameters() if p.requires_grad]
    total_steps = o.steps + o.video_steps
    sam.train()
    rows, window, started = [], {}, time.perf_counter()
    for step in range(total_steps):
        video_phase = step >= o.steps
        if step in (0, o.steps):  # each phase: a fresh optimizer and its own schedule
            # foreach: the same numbers as the per-tensor loop, a third less time on CPU
            optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, foreach=True)
            phase_steps = o.video_steps if video_phase else o.steps
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _rate(phase_steps, o.warmup_fraction, o.decay_fraction))
        if video_phase and (step - o.steps) % 2 == 0:
            clips = tracks.sample(rng, clip_batch, o.clip_frames)  # (N, T, S, S) masks, (N, T, S, S, 3)
            terms, iou = tracked_loss(sam, normalize(clips[1].reshape(-1, *clips[1].shape[2:])), clips[0], o)
            iou_name = "track_iou"
        else:
            frames, image_rows, pick = sample_instances(data, rng, batch_size, o.prompts_per_image)
            masks = data.masks[pick]  # (B, S, S)
            coords, labels = sample_prompts(masks, rng, box_probability=o.box_probability, box_noise=o.box_noise)
            pixels = normalize(data.images[frames])
            terms, iou = prompted_loss(sam, pixels, masks, coords, labels, o, object_loss=video_phase, image_rows=image_rows)
            iou_name = "train_iou"
        total = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if world > 1:
            _average_gradients(params, world)
        torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
        optimizer.step()
        scheduler.step()
        for name, value in [*((k, float(v.detach())) for k, v in terms.items()), (iou_name, iou)]:
            window.setdefault(name, []).append(value)
        if (step + 1) % o.log_every == 0 or step + 1 == total_steps:
            row = {"step": step + 1, **{k: float(np.mean(v)) for k, v in window.items()}}
            if world > 1:
                row = _mean_over_ranks(row, world)
            rows.append(row)
            if on_log is not None:
                on_log(row)
            logger.info(
                "SAM-2 pre-training step %d/%d (%.0f s): loss %.4f, %s",
                step + 1, total_steps, time.perf_counter() - started,
                sum(v for k, v in row.items() if k != "step" and not k.endswith("_iou")),
                ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k.endswith("_iou")),
            )
            window = {}
    return rows


def _world_and_rank() -> tuple[int, int]:
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("data_parallel=True needs an initialised torch.distributed process group")
    return dist.get_world_size(), dist.get_rank()


def _average_gradients(params: list[torch.Tensor], world: int) -> None:
    """Average the ranks' gradients in one all-reduce. A parameter that took no part in a rank's
    graph (its grad is None: the memory modules in an image step) counts as a zero gradient
    there, and stays None only where it took part on no rank, as in a single process."""
    import torch.distributed as dist

    used = [p.grad is not None for p in params]
    flat = torch.cat(
        [p.grad.reshape(-1) if u else p.new_zeros(p.numel()) for p, u in zip(params, used)]
        + [torch.tensor(used, dtype=params[0].dtype)]
    )
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).div_(world)
        offset += n
    for p, used_anywhere in zip(params, flat[offset:].tolist()):
        if not used_anywhere:
            p.grad = None


def _mean_over_ranks(row: dict[str, float], world: int) -> dict[str, float]:
    import torch.distributed as dist

    names = sorted(k for k in row if k != "step")  # the same on every rank: the same phases ran
    values = torch.tensor([row[k] for k in names], dtype=torch.float64)
    dist.all_reduce(values)
    mean = {k: float(v) / world for k, v in zip(names, values.tolist())}
    return {k: row[k] if k == "step" else mean[k] for k in row}


def _rate(steps: int, warmup_fraction: float, decay_fraction: float) -> Callable[[int], float]:
    """Learning-rate factor of one phase of ``steps``: linear warm-up, constant, then a cosine to 0
    over the last ``decay_fraction``. Not a cosine over the whole phase: the decoder starts to
    follow the prompt, and the tracker to track, only after a long plateau, and a learning rate
    already decaying there delayed the decoder past 3000 steps (and, with one schedule over both
    phases that decayed through the video phase, the tracker never turned in 1200 video steps)."""
    warmup = int(warmup_fraction * steps)
    decay_from = int((1.0 - decay_fraction) * steps)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < decay_from:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (step - decay_from) / max(1, steps - decay_from)))

    return rate


def prompted_loss(
    sam: SamAdapter,
    pixels: torch.Tensor,
    masks: np.ndarray,
    coords: torch.Tensor,
    labels: torch.Tensor,
    o: PretrainOptions,
    *,
    object_loss: bool = False,
    image_rows: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """The weighted loss terms of one batch, and the IoU of the candidates inference would keep.

    pixels: (I, 3, S, S) model input; masks: (B, S, S) bool; coords / labels: ``sample_prompts``;
    image_rows: (B,) the frame of each mask (None: I = B, one mask per frame).
    ``object_loss`` adds the object-presence BCE (every prompted object is present).
    """
    multimasks, ious, object_score = prompted_logits(sam, pixels, coords, labels, image_rows)  # (B, M, 4h, 4w), (B, M), (B, 1)
    gt = torch.from_numpy(masks).float()
    terms = _candidate_terms(sam, multimasks, ious, gt, o)
    if object_loss:
        terms["object"] = o.object_weight * torch.nn.functional.binary_cross_entropy_with_logits(
            object_score[:, 0], torch.ones(len(masks))
        )
    return terms, float(_kept_ious(sam, multimasks, ious, gt).mean())


def _candidate_terms(
    sam: SamAdapter, multimasks: torch.Tensor, ious: torch.Tensor, gt: torch.Tensor, o: PretrainOptions
) -> dict[str, torch.Tensor]:
    """Dense BCE + Dice of (B, M, 4h, 4w) candidate logits against (B, S, S) masks (every
    candidate, or the best one), and the optional IoU-head loss."""
    size = gt.shape[-2:]
    b, m = multimasks.shape[:2]
    candidates = sam.upscale(multimasks.flatten(0, 1)[:, None], size).view(b, m, *size)  # (B, M, S, S)
    bce, dice = losses.candidate_bce_dice(candidates, gt)
    if o.candidates == "best":  # SAM-2: only the best candidate learns
        keep = torch.nn.functional.one_hot((o.bce_weight * bce + o.dice_weight * dice).detach().argmin(dim=1), m)
    else:
        keep = torch.full_like(bce, 1.0 / m)
    return {
        "mask_bce": o.bce_weight * (bce * keep).sum(1).mean(),
        "mask_dice": o.dice_weight * (dice * keep).sum(1).mean(),
        "iou": (
            o.iou_weight * losses.iou_prediction_loss(ious, multimasks, gt, torch.ones(b))
            if o.iou_weight
            else ious.sum() * 0.0
        ),
    }


@torch.no_grad()
def _kept_ious(sam: SamAdapter, multimasks: torch.Tensor, ious: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(B,) IoU of the highest-predicted-IoU candidate (inference's choice) against (B, S, S)
    masks (bool, or float thresholded at 0.5)."""
    b = len(gt)
    best = multimasks[torch.arange(b), ious.argmax(dim=1)][:, None]
    kept = sam.upscale(best, gt.shape[-2:])[:, 0] > 0
    target = gt > 0.5
    return (kept & target).flatten(1).sum(1).float() / (kept | target).flatten(1).sum(1).float().clamp(min=1)


def tracked_loss(
    sam: SamAdapter, pixels: torch.Tensor, masks: np.ndarray, o: PretrainOptions
) -> tuple[dict[str, torch.Tensor], float]:
    """SAM-2's video training on a batch of clips, through the package's own ``track_step``.

    pixels: (N·T, 3, S, S) model input, clip-major; masks: (N, T, S, S) bool. Frame 0 of each clip
    is a conditioning frame given its mask (``mask_inputs``, which SAM-2 encodes into memory as
    is); frames 1.. are tracked: memory attention over the earlier frames' memories and object
    pointers, then the mask decoder with no prompt. Their loss: dense BCE + Dice on every
    candidate (frames where the object is visible) and the object-presence BCE. Gradients flow
    through the memories into the memory encoder and memory attention. Returns the weighted terms
    (means over tracked frames) and the mean IoU, on visible frames, of what the tracker outputs
    (its kept candidate, emptied when it says the object is absent).
    """
    n, clip_frames = masks.shape[:2]
    gt = torch.from_numpy(masks).float()  # (N, T, S, S)
    rows = torch.arange(n * clip_frames).view(n, clip_frames)
    tracked = sam.track(sam.sam.forward_image(pixels), rows, gt[:, 0])
    per_frame, ious_kept = [], []
    for t, out in enumerate(tracked, start=1):
        multimasks, ious, object_score = out.multimasks, out.ious, out.object_score
        target = gt[:, t]
        present = target.flatten(1).any(dim=1)
        terms = {
            "object": o.object_weight
            * torch.nn.functional.binary_cross_entropy_with_logits(object_score[:, 0], present.float())
        }
        if present.any():
            terms.update(_candidate_terms(sam, multimasks[present], ious[present], target[present], o))
            shown = torch.where(object_score[:, :, None, None] > 0, multimasks, NO_OBJECT_SCORE)
            ious_kept.append(float(_kept_ious(sam, shown[present], ious[present], target[present]).mean()))
        per_frame.append(terms)
    names = {k for terms in per_frame for k in terms}
    zero = multimasks.sum() * 0.0
    averaged = {k: sum(terms.get(k, zero) for terms in per_frame) / len(per_frame) for k in sorted(names)}
    return averaged, float(np.mean(ious_kept)) if ious_kept else float("nan")


@torch.no_grad()
def evaluate_tracking(sam: SamAdapter, tracks: TrackSet, *, normalize, clip_frames: int = 4, batch_size: int = 8) -> float:
    """Mean IoU of tracked frames (``tracked_loss``'s metric, eval mode) over every forward clip
    of ``tracks`` that starts on the first frame where its object is visible."""
    was_training = sam.training
    sam.eval()
    windows = [w for w in tracks.windows(clip_frames) if w[2] == 1]
    firsts = {}
    for w in windows:
        firsts.setdefault(w[0], w)
    options = PretrainOptions()
    scores, weights = [], []
    ordered = list(firsts.values())
    for start in range(0, len(ordered), batch_size):
        clips = [tracks.clip(w, clip_frames) for w in ordered[start : start + batch_size]]
        masks, frames = np.stack([m for m, _ in clips]), np.stack([f for _, f in clips])
        _, iou = tracked_loss(sam, normalize(frames.reshape(-1, *frames.shape[2:])), masks, options)
        if not math.isnan(iou):
            scores.append(iou)
            weights.append(len(clips))
    sam.train(was_training)
    if not scores:
        raise ValueError(f"no track has {clip_frames} frames to evaluate tracking on")
    return float(np.average(scores, weights=weights))


def central_prompts(masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic prompts for evaluation: the mask pixel nearest the mask's centroid as a click,
    and the exact box. Returns click coords (N, 2, 2) / labels (N, 2) and box coords / labels,
    laid out as ``sample_prompts``."""
    n = masks.shape[0]
    clicks, boxes = np.zeros((n, 2, 2), np.float32), np.zeros((n, 2, 2), np.float32)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            raise ValueError(f"mask {i} is empty: it gives no prompt")
        k = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
        clicks[i, 0] = (xs[k] + 0.5, ys[k] + 0.5)
        boxes[i] = ((xs.min(), ys.min()), (xs.max() + 1, ys.max() + 1))
    click_labels = torch.tensor([[1, -1]], dtype=torch.int32).expand(n, 2)
    box_labels = torch.tensor([[2, 3]], dtype=torch.int32).expand(n, 2)
    return torch.from_numpy(clicks), click_labels, torch.from_numpy(boxes), box_labels


@torch.no_grad()
def evaluate_prompts(
    sam: SamAdapter, data: InstanceSet, *, normalize, batch_size: int = 32, max_masks: int | None = None
) -> dict[str, float]:
    """Mean IoU of the highest-predicted-IoU candidate (inference's choice) against each mask,
    prompted with a central click (``click_iou``) and with the mask's box (``box_iou``);
    ``max_masks`` scores that many masks spread evenly over the set instead of all of them."""
    was_training = sam.training
    sam.eval()
    picked = np.arange(len(data.masks))
    if max_masks is not None and len(picked) > max_masks:
        picked = np.unique(np.linspace(0, len(picked) - 1, max_masks).round().astype(int))
    scores: dict[str, list[float]] = {"click_iou": [], "box_iou": []}
    for start in range(0, len(picked), batch_size):
        rows = picked[start : start + batch_size]
        masks = data.masks[rows]  # (B, S, S)
        pixels = normalize(data.images[data.image_index[rows]])
        click, click_labels, box, box_labels = central_prompts(masks)
        target = torch.from_numpy(masks)
        for name, coords, labels in (("click_iou", click, click_labels), ("box_iou", box, box_labels)):
            multimasks, ious, _ = prompted_logits(sam, pixels, coords, labels)
            scores[name] += _kept_ious(sam, multimasks, ious, target).tolist()
    sam.train(was_training)
    return {name: float(np.mean(values)) for name, values in scores.items()}


def save_sam2_checkpoint(sam: SamAdapter, path: str | Path) -> Path:
    """Write the ``sam2`` package's checkpoint layout (``{"model": state_dict}``) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    torch.save({"model": sam.sam.state_dict()}, staging)
    staging.replace(path)
    return path
