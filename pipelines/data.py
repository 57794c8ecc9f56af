"""The training data pipeline on Ray Data: mixture → per-rank shard → decoded examples → batches.

How it is laid out, and why:

- The **mixture** is the list of (source, record) pairs of every configured source, each source
  repeated ``repeats`` times, permuted by ``(data.seed, epoch)``. Rank r of W takes positions
  r, r+W, r+2W, … of that permutation: each worker has its own shard and one epoch covers the
  mixture once.
- **Balanced ranks** (``data.balance_ranks``, off by default): every optimizer step waits for
  the slowest rank in its gradient all-reduce, and examples differ several-fold in cost (a
  video with three objects against one image and one object). Before dealing, the examples of
  each global micro-batch (``W × batch_size_per_worker`` consecutive positions) are reordered by
  their estimated cost (``example_cost``, from counts known before decoding) and dealt so that
  the ranks get matching totals (``deal_balanced``). A global batch holds the same examples as
  without it; only which rank computes which changes.
- Each worker turns its shard into examples with **Ray Data** (``from_items → map_batches``:
  decode frames and masks, sample frames/objects, tile, template, tokenize), streamed with
  ``preserve_order`` so the sequence of examples is a pure function of the config. The sampling
  RNG of an example is seeded by ``(seed, epoch, position)``. This is what makes a restarted run
  see exactly the data an uninterrupted run would: the data position (rows consumed) is part of
  every checkpoint, and a resumed iterator starts there.
- **Bad input** never crashes the job mid-epoch and never produces a half-filled batch: a record
  that fails to decode is dropped (the batch is filled from the next good ones) and counted with
  its file and reason. Once at least ``MIN_ROWS_FOR_THRESHOLD`` rows have been seen and the
  skipped fraction exceeds ``data.max_bad_fraction``, the iterator raises ``TooManyBadRecords``
  naming the worst offenders. Broken top-level files fail at start (``DatasetFormatError``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from pipelines import console
from pipelines.config import ExperimentConfig, SourceConfig
from salma.batch import SalmaBatch
from salma.data.errors import BadRecordError, DatasetFormatError
from salma.data.examples import ImageGeometry, collate, example_from_bytes, example_to_bytes
from salma.data.record import SampleRecord
from salma.data.sampling import SampleCounts, SamplingOptions, sample_counts, sample_example
from salma.data.sources import read_source, split_note

logger = logging.getLogger(__name__)

MIN_ROWS_FOR_THRESHOLD = 20
ENCODE_BATCH_ROWS = 4
LOG_EVERY_ROWS = 200
STREAM_EPOCHS = 4


class TooManyBadRecords(RuntimeError):
    pass


@dataclass
class BadRecordLog:
    """Skipped records counted per (file, reason), plus the rows seen, for the threshold."""

    counts: Counter = field(default_factory=Counter)
    rows_seen: int = 0

    def add(self, path: str, reason: str) -> None:
        self.counts[(path, reason)] += 1

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    @property
    def fraction(self) -> float:
        return self.skipped / self.rows_seen if self.rows_seen else 0.0

    def worst(self, n: int = 5) -> list[tuple[str, str, int]]:
        return [(p, r, c) for (p, r), c in self.counts.most_common(n)]

    def check(self, max_fraction: float) -> None:
        if self.rows_seen >= MIN_ROWS_FOR_THRESHOLD and self.fraction > max_fraction:
            offenders = "; ".join(f"{p}: {r} (x{c})" for p, r, c in self.worst())
            raise TooManyBadRecords(
                f"{self.skipped} of {self.rows_seen} records were unusable ({self.fraction:.1%} > "
                f"data.max_bad_fraction={max_fraction:.1%}). Worst offenders: {offenders}"
            )

    def to_json(self) -> dict:
        return {
            "rows_seen": self.rows_seen,
            "skipped": self.skipped,
            "fraction": self.fraction,
            "records": [{"file": p, "reason": r, "count": c} for (p, r), c in sorted(self.counts.items())],
        }

    def write(self, path: str | Path) -> None:
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        tmp.replace(path)


# --------------------------------------------------------------------------- the mixture
def read_mixture(sources: list[SourceConfig], *, bad: BadRecordLog | None = None) -> list[list[SampleRecord]]:
    """Read every source (in config order). Index-time bad records go to ``bad``; a broken
    top-level file raises ``DatasetFormatError`` naming it."""
    on_bad = None if bad is None else (lambda err: bad.add(err.path, err.reason))
    out = []
    for s in sources:
        records = read_source(s.format, s.root, s.split, on_bad=on_bad, **s.options)
        if not records:
            note = split_note(s.format, s.root, s.split, **s.options)
            raise DatasetFormatError(
                s.root, f"data source {s.name!r} ({s.format}, split {s.split}) has no usable records{note}"
            )
        unlabelled = [r for r in records if r.meta.get("has_ground_truth") is False]
        if unlabelled:
            # Name the mask file the reader looked for (a MeViS mask_dict.json, a Ref-YouTube-VOS
            # Annotations/ folder): its absence is the usual cause, and every mask would be empty.
            mask_files = {str(ref.meta["mask_file"]) for ref in unlabelled[0].referents if "mask_file" in ref.meta}
            where = f"{', '.join(sorted(mask_files))}: " if mask_files else ""
            raise DatasetFormatError(
                s.root, f"data source {s.name!r} (split {s.split}): {where}{len(unlabelled)} records have expressions "
                f"without masks (e.g. {unlabelled[0].sample_id}); training needs a mask for each, so add "
                "the mask file or move those records to a split used only for inference"
            )
        logger.info("source %s: %d records (x%d repeats)", s.name, len(records), s.repeats)
        out.append(records)
    return out


def mixture_order(sizes: list[int], repeats: list[int], *, seed: int, epoch: int) -> list[tuple[int, int]]:
    """The epoch's permutation of (source index, record index), repeats applied."""
    items = [(s, i) for s, (n, r) in enumerate(zip(sizes, repeats)) for _ in range(r) for i in range(n)]
    random.Random(f"{seed}:{epoch}").shuffle(items)
    return items


# Relative cost of one training example: a base per sample, then per SAM-2 frame, per (object,
# frame) pair and per tracked (object, frame). Fitted to one-thread forward + backward times of
# the tiny preset at batch 8, in ms (benchmarks/example_cost.py: text 2.2, an image with 1 / 3
# objects 11.8 / 16.2, a 3-frame video with 1 / 3 objects 41.9 / 85.5; residuals <= 2.4 ms). What
# counts for dealing is the order and the ratios: a video costs several images, mostly through
# its frames and its tracked objects.
COST_PER_SAMPLE, COST_PER_FRAME, COST_PER_PAIR, COST_PER_TRACKED = 2.6, 5.6, 2.7, 6.7


def example_cost(counts: SampleCounts, *, tracking: bool) -> float:
    """Estimated training cost of an example with these counts; ``tracking``: the model's
    tracking loss is on (``model.loss.track_weight`` > 0), so every object of a video is also
    tracked over its frames after the first."""
    tracked = counts.objects * max(0, counts.frames - 1) if tracking and counts.video else 0
    return (
        COST_PER_SAMPLE
        + COST_PER_FRAME * counts.frames
        + COST_PER_PAIR * counts.pairs
        + COST_PER_TRACKED * tracked
    )


def deal_balanced(items: list, costs: list[float], *, world_size: int, group: int, first: int | None = None) -> list:
    """``items`` reordered so that dealing position p to rank ``p % world_size`` gives every rank
    a matching share of each group's cost.

    Groups are runs of ``group`` consecutive positions (the first run ``first`` long, to align
    with the global batches when an epoch starts mid-batch). Within a group the items are taken
    largest cost first (ties in their original order) and each goes to the rank with the least
    cost so far among those that still have room, a rank's room being the positions of the
    group it is dealt (greedy longest-first scheduling with equal counts). Each rank keeps its
    items in their original order; equal costs leave the group as it was. Pure: same input, same
    output.
    """
    if len(items) != len(costs):
        raise ValueError(f"deal_balanced: {len(items)} items but {len(costs)} costs")
    if world_size < 1 or group < 1:
        raise ValueError(f"deal_balanced: world_size={world_size} and group={group} must be >= 1")
    bounds = [0]
    if first:
        bounds.append(min(first, len(items)))
    while bounds[-1] < len(items):
        bounds.append(min(bounds[-1] + group, len(items)))
    out = []
    for start, end in zip(bounds, bounds[1:]):
        size = end - start
        room = [len(range(r, size, world_size)) for r in range(world_size)]
        load = [0.0] * world_size
        dealt: list[list[int]] = [[] for _ in range(world_size)]
        for i in sorted(range(start, end), key=lambda i: costs[i], reverse=True):
            rank = min((r for r in range(world_size) if len(dealt[r]) < room[r]), key=lambda r: load[r])
            dealt[rank].append(i)
            load[rank] += costs[i]
        for ranked in dealt:
            ranked.sort()
        out.extend(items[dealt[p % world_size][p // world_size]] for p in range(size))
    return out


# --------------------------------------------------------------------------- Ray Data map
@lru_cache(maxsize=4)
def _encoder_state(model_config_json: str):
    from salma.config import SalmaConfig
    from salma.tokenizer import load_tokenizer, tokenizer_name

    config = SalmaConfig.model_validate_json(model_config_json)
    tokenizer = load_tokenizer(tokenizer_name(config))
    return tokenizer, ImageGeometry.from_config(config)


class EncodeRows:
    """Ray Data ``map_batches`` callable: records (JSON) → examples (npz bytes) or bad reasons.

    A class, run in a small actor pool per rank, rather than a function run as tasks: task
    workers that sit idle while training applies backpressure are reclaimed by Ray once there are
    more worker processes than CPUs (always the case beside the train workers on a small
    machine), and every new task worker re-imports torch, transformers and salma — seconds of CPU
    each, taken from the train workers. The actor pays that once per epoch.
    """

    def __init__(self, *, model_config_json: str, options: dict, seed: int):
        self.tokenizer, self.geometry = _encoder_state(model_config_json)
        self.sampling = SamplingOptions(**options)
        self.seed = seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        examples, errors = [], []
        for text, key in zip(batch["record"], batch["key"]):
            record = SampleRecord.from_json(str(text))
            rng = random.Random(f"{self.seed}:{key}")
            try:
                example = sample_example(
                    record, rng=rng, options=self.sampling, tokenizer=self.tokenizer, geometry=self.geometry
                )
                examples.append(example_to_bytes(example))
                errors.append("")
            except BadRecordError as err:
                examples.append(b"")
                errors.append(json.dumps([err.path, err.reason]))
        return {"example": np.array(examples, dtype=object), "error": np.array(errors, dtype=object)}


# --------------------------------------------------------------------------- worker side
class WorkerBatches:
    """Iterator of micro-batches for one rank. ``position`` = rows of this rank's stream consumed
    (across epochs), the data position a checkpoint stores."""

    def __init__(self, cfg: ExperimentConfig, *, rank: int, world_size: int, tokenizer, start_position: int = 0):
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.pad_token_id = tokenizer.pad_token_id
        self.position = start_position
        self.bad = BadRecordLog()
        self.data_wait_s = 0.0
        data = cfg.data
        # Records the readers already dropped (missing files, empty expressions, ...) count as
        # skipped rows too; rank 0 alone counts them so a merged report has each once.
        index_bad = BadRecordLog()
        self.sources = read_mixture(data.sources, bad=index_bad)
        if rank == 0:
            self.bad.counts.update(index_bad.counts)
            self.bad.rows_seen += index_bad.skipped
        self.sizes = [len(r) for r in self.sources]
        self.repeats = [s.repeats for s in data.sources]
        self.rows_per_epoch = len(range(rank, sum(n * r for n, r in zip(self.sizes, self.repeats)), world_size))
        if self.rows_per_epoch == 0:
            raise ValueError(f"rank {rank} of {world_size} gets no data: the mixture is smaller than the world size")
        self.model_config_json = cfg.model_config_resolved.model_dump_json()
        self.options = data.sampling_options().model_dump()
        self._examples = self._example_stream()

    @cached_property
    def record_costs(self) -> list[list[float]]:
        """``example_cost`` of every record, per source (computed once: it depends on the record
        and the sampling options only, not on the epoch)."""
        options = SamplingOptions(**self.options)
        tracking = self.cfg.model_config_resolved.loss.track_weight > 0
        return [
            [example_cost(sample_counts(r, options), tracking=tracking) for r in records] for records in self.sources
        ]

    def _epoch_order(self, epoch: int) -> list[tuple[int, int]]:
        """The epoch's permutation, balanced across ranks when ``data.balance_ranks`` is on."""
        order = mixture_order(self.sizes, self.repeats, seed=self.cfg.data.seed, epoch=epoch)
        if not self.cfg.data.balance_ranks or self.world_size == 1:
            return order
        per_rank = self.cfg.train.batch_size_per_worker
        costs = [self.record_costs[s][i] for s, i in order]
        # Rank streams run on across epochs, so an epoch can start part-way into a micro-batch.
        # Every rank must compute the same permutation: align on rank 0's stream.
        rank0_rows = -(-len(order) // self.world_size)
        into_batch = (epoch * rank0_rows) % per_rank
        first = self.world_size * ((per_rank - into_batch) % per_rank)
        return deal_balanced(order, costs, world_size=self.world_size, group=self.world_size * per_rank, first=first)

    def _epoch_rows(self, epoch: int, skip: int) -> list[dict]:
        order = self._epoch_order(epoch)[self.rank :: self.world_size]
        return [
            {"record": self.sources[s][i].to_json(), "key": f"{epoch}:{self.rank}:{pos}"}
            for pos, (s, i) in enumerate(order)
            if pos >= skip
        ]

    def _example_stream(self) -> Iterator[dict[str, np.ndarray]]:
        import ray

        console.quiet_ray_data()  # local mode streams in the driver: no execution banners there either
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        # Progress bars from several train workers interleave into unreadable logs; this
        # iterator logs rows/s itself instead (every LOG_EVERY_ROWS rows).
        ctx.enable_progress_bars = False
        started, last_log = time.perf_counter(), 0
        epoch, skip = divmod(self.position, self.rows_per_epoch)
        while True:
            # One Dataset (one decode actor pool) streams STREAM_EPOCHS epochs: starting the pool
            # costs a second or two, which once per epoch showed up as data wait.
            rows = []
            for e in range(epoch, epoch + STREAM_EPOCHS):
                rows += self._epoch_rows(e, skip if e == epoch else 0)
            logger.info("rank %d: epochs %d-%d, %d rows from position %d of epoch %d",
                        self.rank, epoch, epoch + STREAM_EPOCHS - 1, len(rows), skip, epoch)
            ds = ray.data.from_items(rows).map_batches(
                EncodeRows,
                batch_size=ENCODE_BATCH_ROWS,
                fn_constructor_kwargs=dict(
                    model_config_json=self.model_config_json, options=self.options, seed=self.cfg.data.seed
                ),
                compute=ray.data.ActorPoolStrategy(size=self.cfg.data.encode_actors),
                num_cpus=self.cfg.data.cpus_per_task,
            )
            for row in ds.iter_rows():
                self.position += 1
                self.bad.rows_seen += 1
                if self.bad.rows_seen - last_log >= LOG_EVERY_ROWS:
                    last_log = self.bad.rows_seen
                    rate = self.bad.rows_seen / (time.perf_counter() - started)
                    logger.info("rank %d data: %d rows (%.1f rows/s), %d skipped, epoch %d", self.rank,
                                self.bad.rows_seen, rate, self.bad.skipped, self.position // self.rows_per_epoch)
                if row["error"]:
                    path, reason = json.loads(row["error"])
                    self.bad.add(path, reason)
                    logger.warning("rank %d skipped %s: %s", self.rank, path, reason)
                    self.bad.check(self.cfg.data.max_bad_fraction)
                    continue
                yield example_from_bytes(row["example"])
            epoch, skip = epoch + STREAM_EPOCHS, 0

    def __iter__(self) -> "WorkerBatches":
        return self

    def close(self) -> None:
        """Stop the Ray Data stream now (before ``ray.shutdown``, or when training ends early)."""
        self._examples.close()

    def __next__(self) -> SalmaBatch:
        start = time.perf_counter()
        examples = [next(self._examples) for _ in range(self.cfg.train.batch_size_per_worker)]
        self.data_wait_s += time.perf_counter() - start
        return collate(examples, pad_token_id=self.pad_token_id)


def worker_batches(
    cfg: ExperimentConfig, *, rank: int, world_size: int, start_step: int, tokenizer, start_position: int | None = None
) -> WorkerBatches:
    """Micro-batches for this rank. Pass the checkpointed ``start_position`` (``.position`` of
    the iterator when the checkpoint was taken) to resume exactly; without it, a run that starts
    at ``start_step`` > 0 replays the stream from the beginning and drops the examples of the
    earlier steps (exact, but it decodes them again)."""
    if start_position is not None:
        return WorkerBatches(cfg, rank=rank, world_size=world_size, tokenizer=tokenizer, start_position=start_position)
    it = WorkerBatches(cfg, rank=rank, world_size=world_size, tokenizer=tokenizer)
    for _ in range(start_step * cfg.train.grad_accum * cfg.train.batch_size_per_worker):
        next(it._examples)
    return it


def ensure_synthetic(cfg: ExperimentConfig) -> dict | None:
    """Write the synthetic datasets when the config asks for them and they are not there yet
    (or were written with another seed, size or generator version). Returns the manifest, or None
    if disabled."""
    syn = cfg.data.synthetic
    if not syn.enabled:
        return None
    from salma.data.synthetic import GENERATOR_VERSION, write_synthetic

    out = Path(syn.out).expanduser().resolve()
    manifest_path = out / "manifest.json"
    clutter = syn.clutter
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        wanted = (syn.seed, syn.size, GENERATOR_VERSION, clutter.model_dump() if clutter.enabled else None)
        if (manifest.get("seed"), manifest.get("size"), manifest.get("version"), manifest.get("clutter")) == wanted:
            return manifest
    from pipelines.progress import phase_line

    logger.info("writing synthetic datasets to %s (seed %d, size %s)", out, syn.seed, syn.size)
    started = time.perf_counter()
    manifest = write_synthetic(out, seed=syn.seed, size=syn.size, clutter=clutter)
    phase_line("data synth", f"wrote the synthetic datasets to {out} in {time.perf_counter() - started:.0f} s")
    return manifest
