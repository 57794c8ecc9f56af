"""The drift probe of a trained model on the clutter-lure splits (``salma.drift_measures``).

``probe_sources`` reads each eval source, keeps the records that carry a ``clutter.json`` sidecar
(the ``lure`` / ``control`` / ``clutter_train`` splits of the synthetic data), samples each record
with a random stream fixed by the source name and the record's position (never by the trial's
seed), so every arm and every seed of a sweep is measured on exactly the same frames and objects,
batches them (the language swap needs two or more samples per batch) and runs
``salma.drift_measures.probe_batch``. It returns the split-level measures as
``eval/<source>/probe/<measure>`` and the per-object rows (for the sweep's bootstrap over samples).
Sources without clutter annotations are skipped (logged).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import torch

from pipelines.config import SourceConfig
from salma.builder import BuiltSalma
from salma.data.errors import BadRecordError
from salma.data.examples import ImageGeometry, collate
from salma.data.sampling import SamplingOptions, sample_example
from salma.data.sources import read_source
from salma.drift_measures import aggregate, probe_batch

logger = logging.getLogger(__name__)

_SEED = 4321  # fixed: the probed frames must not depend on the trial's seed
PROBE_FILE = "drift_probe.json"


def probe_sources(
    built: BuiltSalma,
    sources: Sequence[SourceConfig],
    *,
    num_frames: int,
    batch_size: int = 8,
    max_records: int | None = None,
) -> tuple[dict[str, float], dict[str, list[dict[str, float]]]]:
    """(metrics, rows per source) of the clutter-annotated ``sources``; see the module docstring.
    ``built`` (``build_salma``, ``load_exported``) gives the model and the tokenizer and config
    that encode the probed examples."""
    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size} must be >= 2: the language swap needs another sample")
    model, tokenizer = built.model, built.tokenizer
    geometry = ImageGeometry.from_config(built.config)
    options = SamplingOptions(num_frames=num_frames, max_objects=1)
    metrics: dict[str, float] = {}
    rows_of: dict[str, list[dict[str, float]]] = {}
    was_training = model.training
    model.eval()
    try:
        for source in sources:
            records = [r for r in read_source(source.format, source.root, source.split, **source.options)
                       if r.referents and "clutter_masks" in r.referents[0].meta]
            if not records:
                logger.info("drift probe: %s has no clutter annotations, skipped", source.name)
                continue
            records = records[:max_records] if max_records is not None else records
            examples = []
            for index, record in enumerate(records):
                rng = random.Random(f"{_SEED}:{source.name}:{index}")
                try:
                    examples.append(sample_example(record, rng=rng, options=options, tokenizer=tokenizer, geometry=geometry))
                except BadRecordError as err:
                    logger.warning("drift probe: skipped %s: %s", err.path, err.reason)
            rows: list[dict[str, float]] = []
            for chunk in _chunks(examples, batch_size):
                batch = collate(chunk, pad_token_id=tokenizer.pad_token_id)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(_SEED)
                    rows.extend(probe_batch(model, batch))
            rows_of[source.name] = rows
            metrics.update({f"eval/{source.name}/probe/{k}": v for k, v in aggregate(rows).items()})
            logger.info("drift probe: %s, %d objects", source.name, len(rows))
    finally:
        model.train(was_training)
    return metrics, rows_of


def _chunks(items: list, size: int) -> list[list]:
    """Consecutive chunks of ``size``; a last chunk of one joins the one before (the swap needs two)."""
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2].extend(chunks.pop())
    return chunks
