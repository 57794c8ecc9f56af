"""A validation loss for early stopping: the model's mask loss on a fixed, small held-out batch.

Ray Tune's ASHA scheduler needs a validation metric at every report of a training run. Running
inference + benchmark evaluation at every checkpoint would cost more than the training steps
between them at tiny scale, so the training loop reports a cheaper, honest proxy instead: the
segmentation loss (``mask_bce + mask_dice``, with the configured BCE/Dice weights) of the first
``HELD_OUT_PER_SOURCE`` records of every ``data.eval_sources`` split, sampled once with a fixed
seed, evaluated with the model in eval mode, without gradients, under a fixed torch RNG seed (the
loss samples points). The same batch at every report, so the curve is comparable across steps and
across trials of a sweep. The LM, TMC and boundary terms are left out on purpose: their weights are
what some ablations change, which would make trials incomparable. Reported as
``val/mask_loss`` (plus ``val/mask_bce`` and ``val/mask_dice``); absent when there are no
``eval_sources``. The benchmark scores (cIoU, J&F) come from ``salma evaluate`` on the checkpoint.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import torch

from pipelines.config import ExperimentConfig
from salma.batch import SalmaBatch
from salma.data.errors import BadRecordError
from salma.data.examples import ImageGeometry, collate
from salma.data.sampling import sample_example
from salma.data.sources import read_source

logger = logging.getLogger(__name__)

HELD_OUT_PER_SOURCE = 2
_SEED = 1234  # fixed: the held-out batch must not change with the trial's seed


@dataclass
class HeldOutBatch:
    batch: SalmaBatch

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, *, tokenizer) -> "HeldOutBatch | None":
        """The held-out batch of ``cfg.data.eval_sources`` (None when there are none)."""
        model_config = cfg.model_config_resolved
        geometry = ImageGeometry.from_config(model_config)
        data = cfg.data
        options = data.sampling_options()
        examples = []
        for source in data.eval_sources:
            records = read_source(source.format, source.root, source.split, **source.options)
            taken = 0
            for index, record in enumerate(records):
                if taken == HELD_OUT_PER_SOURCE:
                    break
                rng = random.Random(f"{_SEED}:{source.name}:{index}")
                try:
                    examples.append(sample_example(record, rng=rng, options=options, tokenizer=tokenizer, geometry=geometry))
                except BadRecordError as err:
                    logger.warning("held-out batch: skipped %s: %s", err.path, err.reason)
                    continue
                taken += 1
        if not examples:
            return None
        return cls(batch=collate(examples, pad_token_id=tokenizer.pad_token_id))

    def losses(self, engine: Any, *, dtype: torch.dtype | None) -> dict[str, float]:
        """``val/mask_loss`` and its two terms for the model inside the DeepSpeed ``engine``."""
        module = engine.module
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(_SEED)
                terms = module(self.batch.to(engine.device, dtype=dtype))
        finally:
            module.train(was_training)
        bce, dice = float(terms["mask_bce"]), float(terms["mask_dice"])
        return {"val/mask_bce": bce, "val/mask_dice": dice, "val/mask_loss": bce + dice}
