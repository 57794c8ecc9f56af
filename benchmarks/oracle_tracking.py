"""How well does a SAM-2 track, given perfect key frames? (SALMA's video inference, minus language)

SALMA decodes K key frames of a video with language (``SalmaPredictor``) and hands their masks to
SAM-2's memory tracker, which propagates them to the other frames. This benchmark replaces the
language-conditioned masks with the ground truth: for every expression of a video split it seeds
the package's own video predictor as ``SalmaPredictor._track`` does
(``salma.predictor.propagate_key_masks``: ``add_new_mask`` at the K uniformly spaced key frames,
``propagate_in_video`` forwards and, if needed, backwards) and scores J&F
(``salma.metrics.video_jf``) over all frames and over the tracked (non-key) frames alone. It
also prints the share of tracked frames on which SAM-2 called the object present: SAM-2 empties
the mask of a frame whose object-presence logit is <= 0.

    .venv/bin/python benchmarks/oracle_tracking.py --sam data/sam2_pretrained.pt
    .venv/bin/python benchmarks/oracle_tracking.py --sam runs/<run>/export
    .venv/bin/python benchmarks/oracle_tracking.py --sam random

``--sam``: ``random`` (the tiny preset's SAM-2 as built), a SAM-2 checkpoint (``.pt``, the sam2
layout) or an exported SALMA model folder (its SAM-2). Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from salma.builder import build_salma
from salma.config import resolve_model_config
from salma.data.decode import decode_masks, load_frames
from salma.data.sources import read_source
from salma.image_transforms import resize_square, to_normalized_tensor
from salma.metrics import video_jf
from salma.predictor import SalmaPredictor, init_tracking_state, key_frame_indices, propagate_key_masks


def load_sam(spec: str):
    if spec == "random" or spec.endswith(".pt"):
        config = resolve_model_config({"preset": "tiny"})
        config.sam.checkpoint = None if spec == "random" else spec
        return build_salma(config).model.sam
    return SalmaPredictor.from_pretrained(spec).model.sam


@torch.no_grad()
def oracle_scores(sam, records, num_key_frames: int) -> dict[str, float]:
    """J&F over all frames and over the tracked frames (fractions; NaN when every frame is a key
    frame), and the share of tracked frames called present, with ground-truth key-frame masks."""
    sam.eval()
    model = sam.sam
    all_frames, tracked, present = [], [], []
    for record in records:
        count = record.num_frames
        frames = load_frames(record, list(range(count)))
        images = to_normalized_tensor([resize_square(f, sam.image_size) for f in frames])
        keys = key_frame_indices(count, num_key_frames)
        others = [t for t in range(count) if t not in keys]
        for referent in record.referents:
            gt = decode_masks(referent, list(range(count)), record.height, record.width).astype(bool)
            state = init_tracking_state(model, images, record.height, record.width)
            seeds = F.interpolate(torch.from_numpy(gt[keys])[None].float(), size=(sam.image_size,) * 2, mode="bilinear")
            pred = propagate_key_masks(model, state, keys, seeds > 0.5)[0]
            all_frames.append(video_jf(pred, gt)["J&F"])
            if others:
                tracked.append(video_jf(pred[others], gt[others])["J&F"])
            outputs = state["output_dict_per_obj"][0]["non_cond_frame_outputs"].values()
            present += [float(o["object_score_logits"].max()) > 0 for o in outputs]
    nan = float("nan")
    return {
        "expressions": len(all_frames),
        "jf_all": float(np.mean(all_frames)),
        "jf_tracked": float(np.mean(tracked)) if tracked else nan,
        "present": float(np.mean(present)) if present else nan,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sam", default="random")
    parser.add_argument("--data", default="data/synthetic/mevis", help="a MeViS-format root")
    parser.add_argument("--split", default="valid_u")
    parser.add_argument("--num-key-frames", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    scores = oracle_scores(load_sam(args.sam), read_source("mevis", args.data, args.split), args.num_key_frames)
    print(
        f"{args.sam}: {scores['expressions']} expressions, {args.num_key_frames} key frames: J&F all frames "
        f"{100 * scores['jf_all']:.2f}, tracked frames {100 * scores['jf_tracked']:.2f}; object called present on "
        f"{100 * scores['present']:.0f} % of tracked frames ({time.perf_counter() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
