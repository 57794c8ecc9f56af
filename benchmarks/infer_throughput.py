"""Batch-inference throughput: 1 vs 2 CPU actors (``--mode actors``, the default), or one
record's expressions through the per-expression path vs the batched predictor (``--mode record``).

``--mode record`` builds a model with random weights at ``--size`` (``1b``: the salma-1b preset,
InternVL2.5-1B + SAM-2.1 Hiera-L at 1024 px; ``mid``: the same widths with a quarter of the
InternVL layers, at most 6 tiles, and SAM-2.1 Hiera-T at 512 px; ``small``: 2 InternVL layers
each and at most 2 tiles, else as ``mid``: for machines where the larger sizes take too long) and, in one run, predicts an image record with ``--sentences`` sentences and a video
record of ``--frames`` frames with ``--expressions`` expressions, first the per-expression way
(``salma.per_expression_predictor``, whose video tracker is the ``sam2`` package's per-object
``propagate_in_video``), then with ``SalmaPredictor.segment_expressions`` (all objects of the
record tracked as one batch per frame, ``salma.batched_tracking``). It prints sentences/s and
frames/s (a frame of one expression, as below) of both and their ratio, the seconds each path
spent in SAM-2's tracker, and how many mask pixels differ between the paths (float rounding of
batched kernels can flip a pixel whose logit is within ~1e-7 of 0). ``--records video`` runs the
video record alone.
Answers are generated, with a logits processor that forces the answer a trained model gives
("It is [SEG]."): random weights would otherwise never emit ``[SEG]``, and the generation steps
and the mask branch run exactly as they would. ``--old-expressions N`` runs the per-expression
path on only the first N expressions of the video (its cost per expression does not depend on
the others) and reports its rate over those; the speed-up is the ratio of the two rates, so the
per-expression figure for all expressions is extrapolated from those N. ``--old-sentences N`` does
the same for the image record. ``--no-shared-prefix`` runs the batched path without running the
prompts' shared prefix once (each prompt whole, in the padded batch): what the prefix buys.
``--records-together N`` then asks N image records (of ``--sentences`` sentences, landscape and
portrait) one record at a time and all at once (``SalmaPredictor.segment_records``, what
``salma infer --records-per-batch N`` does in an actor) and prints both times.
``--compile-decoder`` then compiles SAM-2's mask decoder and the MBA block (``torch.compile``,
as ``salma infer --compile-decoder`` does), runs the batched path once to compile and once more
timed, against its eager time.

    .venv/bin/python benchmarks/infer_throughput.py --mode record --size mid [--threads 2] [--records video]

``--mode actors``: batch-inference throughput on the synthetic MeViS video set, 1 vs 2 CPU
actors, in one run.

Writes the synthetic datasets (``--videos`` MeViS train videos, so ``--videos / 4`` in
``valid_u``), starts a private local Ray cluster with ``--cpus`` CPUs, and runs ``pipelines.infer``
on ``valid_u`` with the tiny preset (random weights; the answer is teacher-forced so that every
expression gives a mask that SAM-2 tracks through every frame, the path a trained model takes),
first with 1 actor, then with 2 (one CPU and ``torch.set_num_threads(1)`` each), into fresh
output folders. A "frame" is one frame of one expression: every expression predicts every frame
of its video.

Two figures per run:
- steady state: frames / (last record finished − first record started), from the actors' own
  clocks: the inference rate once the actors are up (the target, ≥ 1.7× with 2 actors on 2 cores);
- end to end: frames / wall time of the whole ``infer`` call, including starting the actors
  (importing torch, building the model) and writing the PNGs, which a small set cannot amortise.

    .venv/bin/python benchmarks/infer_throughput.py [--videos 160] [--key-frames 5] [--cpus 2] [--repeats 3]

The actors are ordinary (niced) Ray worker processes: on a machine where other jobs hold CPUs the
2-actor run shares them, which shows as a longer ``s/video``; ``--repeats`` alternates the runs
and reports the median speed-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from pipelines.config import EvalConfig
from pipelines.infer import InferSummary, infer, parse_dataset
from pipelines.local_ray import local_ray
from salma.data.synthetic import write_synthetic


def steady_state(summary: InferSummary) -> tuple[float, float, float]:
    """(frames/s over the actors' busy window, records in flight on average, mean s per record).

    In-flight records near the actor count with a per-record time that does not grow means the
    actors really ran in parallel; a per-record time that grows with the actor count means they
    shared CPUs (another load on the machine, or fewer cores than actors)."""
    first = min(r["started_at"] for r in summary.per_record)
    last = max(r["finished_at"] for r in summary.per_record)
    busy = sum(r["seconds"] for r in summary.per_record)
    return summary.frames / (last - first), busy / (last - first), busy / len(summary.per_record)


def record_config(size: str):
    """The model config of ``--size`` (module docstring)."""
    from salma.config import salma_1b_config

    config = salma_1b_config()
    if size == "1b":
        return config
    layers, tiles = (6, 6) if size == "mid" else (2, 2)
    mllm = config.mllm.model_copy(update={
        "vision": config.mllm.vision.model_copy(update={"num_hidden_layers": layers}),
        "text": config.mllm.text.model_copy(update={"num_hidden_layers": layers}),
        "max_tiles": tiles,
    })
    sam = config.sam.model_copy(update={"hiera": "tiny", "image_size": 512})
    return config.model_copy(update={"mllm": mllm, "sam": sam})


class ForcedAnswer:
    """Logits processor: the next token is the next one of ``answer`` (the ids of "It is
    [SEG].<|im_end|>"), found from the longest end of each row that is a prefix of it."""

    def __init__(self, answer: list[int]):
        self.answer = answer

    def __call__(self, input_ids, scores):
        import torch

        forced = torch.full_like(scores, float("-inf"))
        for i, row in enumerate(input_ids.tolist()):
            done = max((j for j in range(len(self.answer)) if j <= len(row) and row[len(row) - j :] == self.answer[:j]),
                       default=0)
            forced[i, self.answer[min(done, len(self.answer) - 1)]] = 0.0
        return forced


def record_mode(args) -> None:
    import functools

    import numpy as np
    import torch
    from transformers import LogitsProcessorList

    import salma.per_expression_predictor as per_expression_predictor
    import salma.predictor as predictor_module
    from salma.builder import build_salma
    from salma.conversation import referring_round
    from salma.per_expression_predictor import segment_per_expression
    from salma.predictor import SalmaPredictor
    from salma.tokenizer import IM_END

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.no_shared_prefix:  # every prompt runs whole, as before the shared prefix
        SalmaPredictor._shared_prefix = lambda self, record, prompts, alone=True: None
    started = time.perf_counter()
    built = build_salma(record_config(args.size))
    predictor = SalmaPredictor(built, num_key_frames=args.key_frames, max_new_tokens=8)
    answer = referring_round("x", media="image", rng=None).answer + IM_END
    forced = LogitsProcessorList([ForcedAnswer(built.tokenizer(answer, add_special_tokens=False).input_ids)])
    inner = built.model.mllm.model
    inner.generate = functools.partial(type(inner).generate, inner, logits_processor=forced)
    print(f"size {args.size}: model built in {time.perf_counter() - started:.0f} s; {args.threads} threads; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8)
    video = rng.integers(0, 255, size=(args.frames, 360, 640, 3), dtype=np.uint8)
    words = ["red", "small", "left", "moving", "round", "striped", "far", "tall", "dark", "bright", "upper", "lower",
             "first", "last", "big", "thin"]
    sentences = [f"the {words[i % len(words)]} object next to the {words[(i + 5) % len(words)]} one"
                 for i in range(max(args.sentences, args.expressions))]
    tracking = {"old": 0.0, "new": 0.0}  # seconds in SAM-2's tracker, per path
    _time_calls(per_expression_predictor, "propagate_key_masks", tracking, "old")
    _time_calls(predictor_module, "propagate_key_masks_batched", tracking, "new")
    records = [
        ("image", image, sentences[: args.sentences], args.old_sentences or args.sentences),
        ("video", video, sentences[: args.expressions], args.old_expressions or args.expressions),
    ]
    rows = []
    for name, media, asked, old_count in [r for r in records if r[0] in args.records]:
        frames = 1 if media.ndim == 3 else len(media)
        tracking.update(old=0.0, new=0.0)
        t0 = time.perf_counter()
        old = [segment_per_expression(predictor, media, e) for e in asked[:old_count]]
        old_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        new = predictor.segment_expressions(media, asked)
        new_s = time.perf_counter() - t0
        pairs = [(a, b) for p, q in zip(new, old) for a, b in zip(p.masks, q.masks)]
        differ = sum(int((a != b).sum()) for a, b in pairs)
        pixels = sum(a.size for a, _ in pairs)
        masks = sum(len(p.masks) for p in new)
        rows.append((name, frames, len(asked), old_count, old_s, new_s, differ, pixels, masks, dict(tracking)))
        print(f"{name}: old {old_s:.1f} s for {old_count} (tracking {tracking['old']:.1f} s), "
              f"new {new_s:.1f} s for {len(asked)} (tracking {tracking['new']:.1f} s); "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"{'record':>6} {'frames':>6} {'expr':>4} {'old s':>8} {'old sent/s':>10} {'old frames/s':>12} "
          f"{'new s':>8} {'new sent/s':>10} {'new frames/s':>12} {'speed-up':>8} {'pixels differing':>16}")
    for name, frames, n, old_n, old_s, new_s, differ, pixels, masks, _ in rows:
        old_rate, new_rate = old_n / old_s, n / new_s
        print(f"{name:>6} {frames:>6} {n:>4} {old_s:>8.1f} {old_rate:>10.4f} {old_rate * frames:>12.3f} "
              f"{new_s:>8.1f} {new_rate:>10.4f} {new_rate * frames:>12.3f} {new_rate / old_rate:>7.1f}x "
              f"{f'{differ} of {pixels}':>16}")
    for name, _, n, old_n, old_s, new_s, _, _, _, spent in rows:
        if name == "video":
            print(f"video tracking: old {spent['old']:.1f} s for {old_n} expressions "
                  f"({spent['old'] / old_n:.1f} s each, {spent['old'] / old_s:.0%} of the old path), "
                  f"new {spent['new']:.1f} s for {n} ({spent['new'] / n:.1f} s each, {spent['new'] / new_s:.0%} "
                  f"of the new path); old path on {old_n} of {n} expressions")
    print(f"masks per new record: {[r[8] for r in rows]}; load average after: {os.getloadavg()[0]:.2f}")
    if args.records_together:
        records_together(predictor, sentences[: args.sentences], args.records_together, rng)
    if args.compile_decoder:
        compiled_decoder(predictor, [(r[0], r[1], r[2]) for r in records if r[0] in args.records],
                         {row[0]: row[5] for row in rows})


def records_together(predictor, sentences: list[str], count: int, rng) -> None:
    """``count`` image records (landscape and portrait, so their prompts differ in length), each
    asked alone with ``segment_expressions`` and then all together with ``segment_records``."""
    import numpy as np

    images = [rng.integers(0, 255, size=(480, 640, 3) if i % 2 == 0 else (640, 480, 3), dtype=np.uint8)
              for i in range(count)]
    t0 = time.perf_counter()
    alone = [predictor.segment_expressions(image, sentences) for image in images]
    alone_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = predictor.segment_records([(image, sentences) for image in images])
    together_s = time.perf_counter() - t0
    pairs = [(a, b) for x, y in zip(together, alone) for p, q in zip(x, y) for a, b in zip(p.masks, q.masks)]
    differ, pixels = sum(int((a != b).sum()) for a, b in pairs), sum(a.size for a, _ in pairs)
    print(f"{count} image records of {len(sentences)} sentences: each alone {alone_s:.1f} s, together "
          f"{together_s:.1f} s ({alone_s / together_s:.2f}x); {differ} of {pixels} mask pixels differ", flush=True)


def compiled_decoder(predictor, records, eager_seconds: dict[str, float]) -> None:
    """The batched path again with SAM-2's mask decoder and MBA under ``torch.compile``: one
    untimed call per record compiles, the next is timed against the eager figure above."""
    import numpy as np

    from salma.predictor import compile_decoder_and_mba

    compile_decoder_and_mba(predictor.model)
    for name, media, asked in records:
        t0 = time.perf_counter()
        warm = predictor.segment_expressions(media, asked)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = predictor.segment_expressions(media, asked)
        seconds = time.perf_counter() - t0
        same = all(np.array_equal(a, b) for p, q in zip(warm, again) for a, b in zip(p.masks, q.masks))
        print(f"{name}: batched path with the compiled decoder {seconds:.1f} s against {eager_seconds[name]:.1f} s "
              f"eager ({eager_seconds[name] / seconds:.2f}x); first call with compilation {first:.1f} s; "
              f"masks of both compiled calls equal: {same}", flush=True)


def _time_calls(module, name: str, totals: dict, key: str) -> None:
    """Wrap ``module.name`` so that the seconds spent in it add up in ``totals[key]``."""
    function = getattr(module, name)

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - started

    setattr(module, name, timed)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("actors", "record"), default="actors")
    parser.add_argument("--size", choices=("small", "mid", "1b"), default="mid", help="record mode: model size")
    parser.add_argument("--sentences", type=int, default=7, help="record mode: sentences of the image record")
    parser.add_argument("--frames", type=int, default=30, help="record mode: frames of the video record")
    parser.add_argument("--expressions", type=int, default=14, help="record mode: expressions of the video record")
    parser.add_argument("--old-expressions", type=int, help="record mode: per-expression path on the first N only")
    parser.add_argument("--old-sentences", type=int, help="record mode: per-expression path on the first N sentences only")
    parser.add_argument("--no-shared-prefix", action="store_true",
                        help="record mode: the batched path without the shared prompt prefix (each prompt run whole)")
    parser.add_argument("--compile-decoder", action="store_true",
                        help="record mode: afterwards, the batched path with torch.compile'd decoder and MBA, timed")
    parser.add_argument("--records", nargs="+", choices=("image", "video"), default=["image", "video"],
                        help="record mode: which records to run")
    parser.add_argument("--records-together", type=int, default=0,
                        help="record mode: also N image records asked alone, then together (segment_records)")
    parser.add_argument("--threads", type=int, default=2, help="record mode: torch threads")
    parser.add_argument("--videos", type=int, default=160, help="synthetic MeViS train videos (valid_u gets a quarter)")
    parser.add_argument("--key-frames", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=2, help="logical CPUs of the private Ray cluster")
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternate 1- and 2-actor runs this many times; the speed-up is the median")
    parser.add_argument("--work", help="folder for data and outputs (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.mode == "record":
        record_mode(args)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="salma-infer-bench-"))
    data = work / "data"
    if not (data / "manifest.json").is_file():
        write_synthetic(data, seed=0, num_images=2, num_videos=args.videos)
    source = parse_dataset(f"mevis:{data / 'mevis'}", split="valid_u")
    print(f"data: {source.root} split valid_u; load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    rows = []
    with local_ray(num_cpus=args.cpus):
        for _ in range(args.repeats):
            for actors in (1, 2):
                settings = EvalConfig(num_actors=actors, cpus_per_actor=1, threads_per_actor=1, generate=False,
                                      num_key_frames=args.key_frames, visual_samples=0, use_gpu=False)
                started, driver_cpu = time.perf_counter(), time.process_time()
                summary = infer("tiny", source, work / f"out_{actors}", settings=settings, resume=False)
                wall = time.perf_counter() - started
                driver = (time.process_time() - driver_cpu) / wall
                rows.append((actors, summary, *steady_state(summary), summary.frames / wall, wall, driver))
    print(f"{'actors':>6} {'videos':>6} {'frames':>7} {'steady frames/s':>16} {'in flight':>9} {'s/video':>8} "
          f"{'end-to-end frames/s':>20} {'wall s':>7} {'driver CPUs':>11}")
    for actors, summary, steady, in_flight, per_video, end_to_end, wall, driver in rows:
        print(f"{actors:>6} {summary.records:>6} {summary.frames:>7} {steady:>16.1f} {in_flight:>9.2f} "
              f"{per_video:>8.3f} {end_to_end:>20.1f} {wall:>7.1f} {driver:>11.2f}")
    pairs = list(zip(rows[0::2], rows[1::2]))
    steady = statistics.median(two[2] / one[2] for one, two in pairs)
    end_to_end = statistics.median(two[5] / one[5] for one, two in pairs)
    print(f"speed-up with 2 actors (median of {len(pairs)}): steady state {steady:.2f}x, end to end {end_to_end:.2f}x "
          f"(target >= 1.7x steady state); load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
