"""Training data for Ray Train workers.

INTERIM (being replaced by the Ray Data mixture pipeline in this same change series): yields
deterministic random batches so the training loop can be developed against the final interface.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipelines.config import ExperimentConfig
from salma.batch import SalmaBatch


def worker_batches(
    cfg: ExperimentConfig, *, rank: int, world_size: int, start_step: int, tokenizer
) -> Iterator[SalmaBatch]:
    """Micro-batches for this rank, starting at global step ``start_step``: ``grad_accum``
    micro-batches per step, the same sequence on every run with the same config (so a resumed
    run sees exactly the data an uninterrupted one would)."""
    from salma.testing import random_batch

    model_cfg = cfg.model_config_resolved
    step = start_step
    while True:
        for micro in range(cfg.train.grad_accum):
            seed = ((cfg.data.seed * 1_000_003 + step) * 97 + micro) * 131 + rank
            yield random_batch(
                model_cfg, cfg.train.batch_size_per_worker, cfg.data.num_frames, seed=seed, tokenizer=tokenizer
            )
        step += 1
