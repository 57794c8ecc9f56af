"""Can the tiny SAM-2 learn to segment *the object at a point* from scratch, and how fast?

The position expressions of the synthetic data ("the left one", "the red square on the left")
ask the model to tell apart objects that may look exactly alike. Whatever the language path
produces, the SAM-2 mask decoder must then turn a prompt into a location. This benchmark isolates
that step: the tiny preset's SAM-2 alone (image encoder, prompt encoder, mask decoder, all random
init, trained together), SAM-2's own point prompt (the object's centre, label 1) and images with
two identical red squares, one on each side. The loss is the BCE of the first multimask
candidate against the square under the point.

It prints, every ``--eval-every`` steps, the loss and the IoU of the prediction with the pointed
square (``own``) and with the other square (``other``). A decoder that ignores the point segments
both squares (own ≈ other ≈ 0.45); one that localises gets own → 1, other → 0.

    .venv/bin/python benchmarks/decoder_localisation.py --steps 1500

Measured on the 2-core machine (``--steps 3000 --eval-every 300 --threads 1``): the decoder
segments both squares (own ≈ other ≈ 0.43) for hundreds of steps; with ``--seed 0`` it then
localises at about step 900 and stays (own 0.99, other 0.00); with ``--seed 1`` it localises at
step 600 (own 0.76), falls back to both squares by step 900 and stays there to step 3000. The
same seed with two threads instead of one did not localise within 1500 steps. See
docs/experiments/2026-12-02-grounding-with-sam2-from-scratch.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from salma.builder import build_salma
from salma.config import resolve_model_config
from salma.metrics import ciou_giou
from salma.sam_pretraining import prompted_logits

SQUARE = 38


def two_squares(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` images (N, 3, S, S) of two identical red squares, their masks (N, 2, S, S) and
    centres (N, 2, 2) as (x, y) pixels; square 0 is on the left or the right at random."""
    rng = np.random.default_rng(seed)
    images = np.full((count, 3, size, size), 0.3, np.float32)
    masks = np.zeros((count, 2, size, size), bool)
    centres = np.zeros((count, 2, 2), np.float32)
    left, right = size // 12, size - size // 12 - SQUARE
    for n in range(count):
        xs = (left, right) if rng.random() < 0.5 else (right, left)
        for k, x0 in enumerate(xs):
            y0 = int(rng.integers(size // 12, size - size // 12 - SQUARE))
            images[n, :, y0 : y0 + SQUARE, x0 : x0 + SQUARE] = np.array([0.9, 0.1, 0.1], np.float32)[:, None, None]
            masks[n, k, y0 : y0 + SQUARE, x0 : x0 + SQUARE] = True
            centres[n, k] = (x0 + SQUARE / 2, y0 + SQUARE / 2)
    return torch.from_numpy((images - 0.5) / 0.25), torch.from_numpy(masks), torch.from_numpy(centres)


def ciou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Cumulative IoU of (N, S, S) boolean predictions against (N, S, S) masks."""
    return ciou_giou(zip(pred.numpy(), gt.numpy()))[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="model initialisation and batch order")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    sam = build_salma(resolve_model_config({"preset": "tiny"})).model.sam
    size = sam.image_size
    images, masks, centres = two_squares(64, size, seed=0)
    val_images, val_masks, val_centres = two_squares(32, size, seed=1)
    optimizer = torch.optim.AdamW(sam.parameters(), lr=args.lr)

    def logits_at(frames: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """The first multimask candidate (N, S, S) for one positive click per frame."""
        labels = torch.ones(points.shape[0], 1, dtype=torch.int32)
        multimasks, _, _ = prompted_logits(sam, frames, points[:, None], labels)
        return sam.upscale(multimasks[:, :1], (size, size))[:, 0]

    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    print(f"{'step':>6} {'s':>5} {'loss':>7} {'own':>6} {'other':>6}")
    for step in range(1, args.steps + 1):
        rows = torch.randint(0, len(images), (args.batch_size,), generator=generator)
        which = torch.randint(0, 2, (args.batch_size,), generator=generator)
        logits = logits_at(images[rows], centres[rows, which])
        loss = F.binary_cross_entropy_with_logits(logits, masks[rows, which].float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad():
                which = torch.arange(len(val_images)) % 2
                rows = torch.arange(len(val_images))
                pred = logits_at(val_images, val_centres[rows, which]) > 0
                own, other = ciou(pred, val_masks[rows, which]), ciou(pred, val_masks[rows, 1 - which])
            print(f"{step:>6} {time.perf_counter() - started:>5.0f} {loss.item():>7.4f} {own:>6.3f} {other:>6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
