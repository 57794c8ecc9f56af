"""Does the from-scratch tiny SAM-2 learn to follow a prompt, and when? (``salma.sam_pretraining``)

Trains the tiny preset's SAM-2 with click and box prompts on the instance masks of the synthetic
RefCOCO train split (the library's pre-training, the same code as ``sam_pretrain`` in an
experiment config) and prints, every ``--eval-every`` steps, the training loss and the held-out
IoU on the val split's masks of the candidate inference keeps, prompted with a central click and
with the exact box. A decoder that ignores the prompt segments every object: click and box then
give the same IoU (about 0.44 here); one that follows it climbs well above, and the two differ.

With ``--video-steps`` it goes on with the video phase (clips of the MeViS and Ref-YouTube-VOS
train splits, tracked through SAM-2's memory) and also prints the held-out tracked-frame IoU on
the MeViS valid_u clips (``evaluate_tracking``: 4-frame clips, the first frame given its mask).
``--start`` loads a SAM-2 checkpoint first, e.g. one written by ``--out``, to train or score only
the video phase (``--steps 0``).

    .venv/bin/python benchmarks/sam_pretraining.py --steps 3000
    .venv/bin/python benchmarks/sam_pretraining.py --steps 0 --video-steps 1200 --start data/sam2_image.pt
    .venv/bin/python benchmarks/sam_pretraining.py --steps 3000 --seed 1 --iou-weight 1 --warmup-fraction 0.05
    .venv/bin/python benchmarks/sam_pretraining.py --steps 3000 --out data/sam2_pretrained.pt
    .venv/bin/python benchmarks/sam_pretraining.py --steps 1200 --batch-size 32 --prompts-per-image 4

Figures: docs/experiments/2026-12-03-sam2-pretraining-and-tracking.md; several prompts per
encoded frame (``--prompts-per-image``): docs/experiments/2026-12-07-quickstart-time-budget.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from salma.builder import build_sam
from salma.config import resolve_model_config
from salma.data.sources import read_source
from salma.image_transforms import to_normalized_tensor
from salma.sam_pretraining import (
    PretrainOptions,
    evaluate_prompts,
    evaluate_tracking,
    instance_set,
    pretrain_sam,
    save_sam2_checkpoint,
    track_set,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/synthetic", help="folder written by `salma data synth`")
    defaults = PretrainOptions()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--prompts-per-image", type=int, default=defaults.prompts_per_image)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup-fraction", type=float, default=defaults.warmup_fraction)
    parser.add_argument("--decay-fraction", type=float, default=defaults.decay_fraction)
    parser.add_argument("--iou-weight", type=float, default=defaults.iou_weight)
    parser.add_argument("--candidates", choices=("all", "best"), default=defaults.candidates)
    parser.add_argument("--box-probability", type=float, default=defaults.box_probability)
    parser.add_argument("--video-steps", type=int, default=0, help="video phase after --steps (0: images only)")
    parser.add_argument("--start", help="a SAM-2 checkpoint to start from instead of random weights")
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="data order and prompts (the model init follows the preset's seed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the trained SAM-2 here (sam2 checkpoint layout)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = resolve_model_config({"preset": "tiny"})
    config.sam.checkpoint = args.start
    torch.manual_seed(config.seed)
    sam = build_sam(config.sam)
    root = f"{args.data}/refer/refcoco"
    size = sam.image_size
    train_records = read_source("refcoco", root, "train")
    val = instance_set(read_source("refcoco", root, "val"), image_size=size)
    tracks = val_tracks = None
    if args.video_steps:
        videos = [r for fmt in ("mevis", "ref_youtube_vos") for r in read_source(fmt, f"{args.data}/{fmt}", "train")]
        train_records += videos  # the quickstart's mixture: video frames are also prompted images
        tracks = track_set(videos, image_size=size)
        val_tracks = track_set(read_source("mevis", f"{args.data}/mevis", "valid_u"), image_size=size)
        print(f"video: {len(tracks.tracks)} tracks; held out: {len(val_tracks.tracks)} tracks")
    train = instance_set(train_records, image_size=size)
    print(f"train: {len(train.masks)} masks on {len(train.images)} images; held out: {len(val.masks)} masks")
    options = PretrainOptions(
        steps=args.steps, batch_size=args.batch_size, prompts_per_image=args.prompts_per_image, lr=args.lr,
        warmup_fraction=args.warmup_fraction,
        decay_fraction=args.decay_fraction, iou_weight=args.iou_weight, candidates=args.candidates,
        box_probability=args.box_probability, video_steps=args.video_steps, log_every=args.eval_every,
        seed=args.seed,
    )
    started = time.perf_counter()
    print(f"{'step':>6} {'s':>5} {'loss':>7} {'train IoU':>9} {'track IoU':>9} {'val click':>9} {'val box':>8} {'val track':>9}")

    def report(row: dict[str, float]) -> None:
        held_out = evaluate_prompts(sam, val, normalize=to_normalized_tensor)
        tracked = evaluate_tracking(sam, val_tracks, normalize=to_normalized_tensor) if val_tracks else float("nan")
        loss = sum(v for k, v in row.items() if k != "step" and not k.endswith("_iou"))
        print(f"{row['step']:>6.0f} {time.perf_counter() - started:>5.0f} {loss:>7.4f} "
              f"{row.get('train_iou', float('nan')):>9.3f} {row.get('track_iou', float('nan')):>9.3f} "
              f"{held_out['click_iou']:>9.3f} {held_out['box_iou']:>8.3f} {tracked:>9.3f}", flush=True)

    if args.steps + args.video_steps == 0:
        report({"step": 0})
    else:
        pretrain_sam(sam, train, options, normalize=to_normalized_tensor, tracks=tracks, on_log=report)
    if args.out:
        print(f"wrote {save_sam2_checkpoint(sam, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
