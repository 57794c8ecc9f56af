"""Grounding probe: does tiny SALMA learn to pick the referred object, and how fast?

A single-process training loop (no Ray, no DeepSpeed: the model library alone) on referring
image data, printing every ``--eval-every`` steps, on a fixed train subset and on the val split:

- cIoU and gIoU of the teacher-forced mask (the ``[SEG]`` of the first answer template; the
  benchmark evaluation generates instead, see ``salma evaluate``);
- **choice**: over the images with two or more referents, the fraction of predictions that
  overlap their own referent more than any other referent of the same image. 0.5 is what a
  model that ignores the expression gets on two-referent images; 1.0 is perfect grounding.

Data: ``--data DIR`` reads the synthetic RefCOCO-format split written by ``salma data synth``
(through the same reader as real data); ``--toy SCALE`` instead draws the coloured rectangles of
``salma.testing.random_sample`` (two referents, "the <colour> square") pasted into a canvas
``SCALE`` times larger, so that ``--toy 1`` and ``--toy 2`` differ only in how many cells of the
stride-16 map an object covers.

    .venv/bin/python benchmarks/grounding_probe.py --data data/synthetic --steps 1200
    .venv/bin/python benchmarks/grounding_probe.py --toy 1 --steps 400
    .venv/bin/python benchmarks/grounding_probe.py --toy 2 --steps 600
    .venv/bin/python benchmarks/grounding_probe.py --data data/synthetic --delta '{"sam": {"image_size": 256}}'
    .venv/bin/python benchmarks/grounding_probe.py --data data/synthetic --steps 2400 --by-kind
    .venv/bin/python benchmarks/grounding_probe.py --data data/synthetic --steps 1600 --kind position

``--by-kind`` adds, after the last step, the val scores per kind of expression (``colour``: names
a colour; ``position``: left / right / top / bottom; ``size``: big / small; ``shape``: the shape
alone), each on the val images restricted to the referents that have an expression of that kind
(so ``choice`` there is among those referents only; kinds with few multi-referent images are
noisy). ``--kind KIND`` trains and scores on the expressions of that kind alone (same
restriction, applied to the train split too).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time

import numpy as np
import torch

from salma.builder import build_salma
from salma.config import resolve_model_config
from salma.conversation import referring_round
from salma.data.examples import ImageGeometry, collate, encode_example
from salma.data.sampling import SamplingOptions, sample_example
from salma.data.sources import read_source
from salma.data.synthetic_scenes import COLORS, POSITION_SUFFIX
from salma.testing import random_sample


def toy_examples(seed: int, count: int, scale: int, tokenizer, geometry) -> list[dict]:
    rng, text_rng = np.random.default_rng(seed), random.Random(seed)
    examples = []
    for _ in range(count):
        frames, masks, expressions = random_sample(rng, num_frames=1, num_objects=2)
        if scale > 1:
            h, w = frames[0].shape[:2]
            canvas = rng.integers(0, 60, size=(h * scale, w * scale, 3), dtype=np.uint8)
            top, left = int(rng.integers(0, h * (scale - 1) + 1)), int(rng.integers(0, w * (scale - 1) + 1))
            canvas[top : top + h, left : left + w] = frames[0]
            big = np.zeros(masks.shape[:2] + canvas.shape[:2], dtype=bool)  # (O, 1, H', W')
            big[..., top : top + h, left : left + w] = masks
            frames, masks = [canvas], big
        rounds = [referring_round(e, media="image", rng=text_rng) for e in expressions]
        examples.append(
            encode_example(frames=frames, masks=masks, rounds=rounds, media="image", tokenizer=tokenizer, geometry=geometry)
        )
    return examples


@torch.no_grad()
def evaluate(model, examples: list[dict], pad_token_id: int) -> dict[str, float]:
    model.eval()
    inter = union = 0.0
    ious, choices = [], []
    for start in range(0, len(examples), 8):
        b = collate(examples[start : start + 8], pad_token_id=pad_token_id)
        out = model.mllm(input_ids=b.input_ids, attention_mask=b.attention_mask, pixel_values=b.pixel_values)
        _, seg, _ = model.segment_batch(b, out.hidden_states, model.seg_hidden_states(out.hidden_states, b.input_ids))
        pred = model.sam.upscale(seg.mask_logits, b.gt_masks.shape[-2:])[:, 0] > 0  # (P, S, S)
        gt = b.gt_masks.bool()
        i = (pred & gt).flatten(1).sum(1).float()
        u = (pred | gt).flatten(1).sum(1).float()
        inter, union = inter + i.sum().item(), union + u.sum().item()
        ious += torch.where(u > 0, i / u.clamp(min=1), torch.ones_like(u)).tolist()
        sample_of_pair = b.seg_sample_index[b.pair_object_index]
        for p in range(pred.shape[0]):
            same = (sample_of_pair == sample_of_pair[p]).nonzero().flatten()
            if len(same) < 2:
                continue
            overlap = [((pred[p] & gt[q]).sum() / (pred[p] | gt[q]).sum().clamp(min=1)).item() for q in same]
            choices.append(int(same[int(np.argmax(overlap))]) == p)
    model.train()
    return {"ciou": inter / max(union, 1.0), "giou": float(np.mean(ious)), "choice": float(np.mean(choices)) if choices else float("nan"),
            "choice_pairs": len(choices)}


KINDS = ("colour", "shape", "size", "position")


def expression_kind(text: str) -> str:
    """The kind of a synthetic referring expression (see ``--by-kind``)."""
    words = set(text.split())
    if words & set(POSITION_SUFFIX):
        return "position"
    if words & {"big", "small"}:
        return "size"
    if words & set(COLORS):
        return "colour"
    return "shape"


def restrict_to_kind(records: list, kind: str) -> list:
    """The records with only the referents (and expressions) of ``kind``; records left without
    referents are dropped."""
    out = []
    for record in records:
        referents = []
        for referent in record.referents:
            expressions = [e for e in referent.expressions if expression_kind(e) == kind]
            if expressions:
                referents.append(dataclasses.replace(referent, expressions=expressions))
        if referents:
            out.append(dataclasses.replace(record, referents=referents))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/synthetic", help="folder written by `salma data synth`")
    parser.add_argument("--toy", type=int, default=0, help="toy rectangles in a canvas this many times larger (0: off)")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--val-images", type=int, default=0, help="score only the first N val images (0: all)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=400)
    parser.add_argument("--delta", default="{}", help="model config delta as JSON, e.g. '{\"sam\": {\"image_size\": 256}}'")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--by-kind", action="store_true", help="val scores per kind of expression after the last step")
    parser.add_argument("--kind", choices=KINDS, help="train and score on the expressions of this kind only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = resolve_model_config({"preset": "tiny", **json.loads(args.delta)})
    built = build_salma(config)
    model, tokenizer, geometry = built.model, built.tokenizer, ImageGeometry.from_config(config)
    options = SamplingOptions(num_frames=1, max_objects=3)
    rng = random.Random(0)
    by_kind: dict[str, list[dict]] = {}
    if args.toy:
        pool = toy_examples(1, 3000, args.toy, tokenizer, geometry)
        train_eval, val_eval = pool[:60], toy_examples(2, 60, args.toy, tokenizer, geometry)

        def draw(step: int) -> list[dict]:
            return [pool[rng.randrange(len(pool))] for _ in range(args.batch_size)]
    else:
        root = f"{args.data}/refer/refcoco"
        train, val = read_source("refcoco", root, "train"), read_source("refcoco", root, "val")
        if args.kind:
            train, val = restrict_to_kind(train, args.kind), restrict_to_kind(val, args.kind)

        def encode(records, seed):
            return [
                sample_example(r, rng=random.Random(f"{seed}:{i}"), options=options, tokenizer=tokenizer, geometry=geometry)
                for i, r in enumerate(records)
            ]

        val = val[: args.val_images or None]
        train_eval, val_eval = encode(train[:60], 0), encode(val, 0)
        by_kind = {kind: encode(restrict_to_kind(val, kind), 0) for kind in KINDS} if args.by_kind else {}
        order: list[int] = []

        def draw(step: int) -> list[dict]:
            batch = []
            while len(batch) < args.batch_size:
                if not order:
                    order.extend(range(len(train)))
                    rng.shuffle(order)
                i = order.pop()
                batch.append(sample_example(train[i], rng=random.Random(f"{step}:{i}"), options=options,
                                            tokenizer=tokenizer, geometry=geometry))
            return batch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    warmup = max(1, int(0.05 * args.steps))
    started = time.perf_counter()
    print(f"{'step':>6} {'s':>6} {'train cIoU':>10} {'gIoU':>6} {'choice':>6} {'val cIoU':>9} {'gIoU':>6} {'choice':>6}")
    for step in range(1, args.steps + 1):
        model.set_schedule(step, args.steps)
        lr = args.lr * min(1.0, step / warmup) * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        terms = model(collate(draw(step), pad_token_id=tokenizer.pad_token_id))
        optimizer.zero_grad()
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            tr = evaluate(model, train_eval, tokenizer.pad_token_id)
            va = evaluate(model, val_eval, tokenizer.pad_token_id)
            print(f"{step:>6} {time.perf_counter() - started:>6.0f} {tr['ciou']:>10.3f} {tr['giou']:>6.3f} "
                  f"{tr['choice']:>6.3f} {va['ciou']:>9.3f} {va['giou']:>6.3f} {va['choice']:>6.3f}", flush=True)
    if by_kind:
        print(f"\nval by kind of expression, step {args.steps}:")
        print(f"{'kind':>9} {'images':>6} {'cIoU':>6} {'gIoU':>6} {'choice':>6} {'of pairs':>8}")
        for kind, examples in by_kind.items():
            if examples:
                va = evaluate(model, examples, tokenizer.pad_token_id)
                print(f"{kind:>9} {len(examples):>6} {va['ciou']:>6.3f} {va['giou']:>6.3f} {va['choice']:>6.3f} {va['choice_pairs']:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
