"""Forward latency of SALMA vs the Sa2VA baseline at salma-1b dimensions (random weights, CPU).

One image: one 448-px tile for the MLLM, a 1024² SAM-2 input, one referring question. Both models
are the same object (the baseline is MBA switched off), timed in the same run, alternating, and
each figure is the median of ``--repeats`` runs after a warm-up. Also prints a per-component
breakdown and the number of pre-pass decoder calls for a frame with 5 objects.

    .venv/bin/python benchmarks/model_overhead.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from salma.builder import build_salma
from salma.config import salma_1b_config
from salma.conversation import referring_round
from salma.data.examples import ImageGeometry, collate, encode_example


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def one_image_batch(built, num_objects: int):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(448, 448, 3), dtype=np.uint8)
    masks = np.zeros((num_objects, 1, 448, 448), dtype=bool)
    masks[:, :, 100:300, 100:300] = True
    rounds = [referring_round("the red circle on the left", media="image", rng=None) for _ in range(num_objects)]
    geometry = ImageGeometry.from_config(built.config)
    example = encode_example(frames=[image], masks=masks, rounds=rounds, media="image",
                             tokenizer=built.tokenizer, geometry=geometry)
    return collate([example], pad_token_id=built.tokenizer.pad_token_id)


@torch.no_grad()
def forward_components(model, batch, mba) -> dict[str, float]:
    """The inference forward, component by component, with ``mba`` (None = baseline)."""
    model.mba = mba
    t: dict[str, float] = {}
    out, t["mllm"] = timed(lambda: model.mllm(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                              pixel_values=batch.pixel_values))
    seg = model.seg_projector(model.seg_hidden_states(out.hidden_states, batch.input_ids))
    language, mask = model.language_tokens(seg, out.hidden_states, batch.seg_sample_index, batch.expr_positions)
    features, t["sam_encoder"] = timed(lambda: model.sam.encode(batch.sam_pixel_values))
    priors, t["prepass"] = timed(lambda: model.frame_priors(features))
    visual = features.image_embed[batch.pair_frame_index]
    if mba is not None:
        (visual, _), t["mba"] = timed(lambda: mba(visual, language[batch.pair_object_index],
                                                  mask[batch.pair_object_index], priors[batch.pair_frame_index]))
    else:
        t["mba"] = 0.0
    high_res = [h[batch.pair_frame_index] for h in features.high_res]
    _, t["mask_decode"] = timed(lambda: model.sam.decode(visual, high_res, language[batch.pair_object_index][:, :1]))
    t["total"] = sum(t.values())
    return t


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"building salma-1b with random weights (threads={args.threads}) ...", flush=True)
    built = build_salma(salma_1b_config())
    model = built.model.eval()
    mba = model.mba
    batch = one_image_batch(built, num_objects=1)
    forward_components(model, batch, mba)  # warm-up
    forward_components(model, batch, None)
    runs = {"salma": [], "baseline": []}
    for i in range(args.repeats):
        runs["salma"].append(forward_components(model, batch, mba))
        runs["baseline"].append(forward_components(model, batch, None))
        print(f"  run {i + 1}/{args.repeats}: salma {runs['salma'][-1]['total']:.3f}s "
              f"baseline {runs['baseline'][-1]['total']:.3f}s", flush=True)
    med = {k: {c: statistics.median(r[c] for r in v) for c in v[0]} for k, v in runs.items()}
    print("\ncomponent (median s)     SALMA    baseline")
    for c in ("mllm", "sam_encoder", "prepass", "mba", "mask_decode", "total"):
        print(f"  {c:<20} {med['salma'][c]:9.4f} {med['baseline'][c]:9.4f}")
    overhead = med["salma"]["total"] / med["baseline"]["total"] - 1
    # The MLLM and the SAM-2 encoder do the same work in both models, but on a shared CPU their
    # run-to-run noise is larger than MBA's whole cost; the added components alone are the
    # noise-robust estimate of the overhead.
    added = med["salma"]["prepass"] + med["salma"]["mba"] + max(0.0, med["salma"]["mask_decode"] - med["baseline"]["mask_decode"])
    print(f"\noverhead, end to end: SALMA/baseline - 1 = {overhead * 100:.2f}%")
    print(f"overhead, added components (pre-pass + MBA + decode difference) / baseline = "
          f"{added / med['baseline']['total'] * 100:.2f}% (target <= 1%, aim <= 0.5%)")
    five = one_image_batch(built, num_objects=5)
    before = model.sam.prepass_calls, model.sam.prepass_frames
    forward_components(model, five, mba)
    calls = model.sam.prepass_calls - before[0]
    frames = model.sam.prepass_frames - before[1]
    print(f"pre-pass decoder calls for one frame with 5 objects: {calls} call(s) covering {frames} frame(s)")


if __name__ == "__main__":
    main()
