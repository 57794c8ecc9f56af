"""The learning-rate schedule: linear warm-up over the first ``warmup_fraction`` of the steps,
then a cosine decay to zero (the training recipe in docs/design.md: 5 % warm-up, then cosine).

``warmup_cosine`` is the multiplier of the base learning rate used by optimizer step ``step``
(0-based). It is a pure function of the step, and ``torch.optim.lr_scheduler.LambdaLR`` keeps only
its step counter in the state DeepSpeed checkpoints, so a resumed run continues the same curve.
"""

from __future__ import annotations

import math

import torch


def warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    """Number of warm-up steps: ``ceil(fraction · total)``, 0 when the fraction is 0."""
    if not 0.0 <= warmup_fraction <= 1.0:
        raise ValueError(f"train.warmup_fraction={warmup_fraction} must lie in [0, 1]")
    return math.ceil(warmup_fraction * total_steps)


def warmup_cosine(step: int, *, total_steps: int, warmup_fraction: float) -> float:
    """Multiplier in (0, 1]: ``(step + 1) / W`` during the ``W`` warm-up steps (so the first step
    already learns), then ``0.5 · (1 + cos(π · p))`` with ``p`` going from 0 at the end of the
    warm-up towards 1 at ``total_steps``."""
    warmup = warmup_steps(total_steps, warmup_fraction)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_fraction: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over ``warmup_cosine``; DeepSpeed steps it once per optimizer step."""
    warmup_steps(total_steps, warmup_fraction)  # validate before the optimizer is touched
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps=total_steps, warmup_fraction=warmup_fraction)
    )


def parameter_groups(
    named_parameters: list[tuple[str, torch.nn.Parameter]], *, lr: float, multipliers: dict[str, float]
) -> list[dict]:
    """Optimizer parameter groups: ``lr · multiplier`` for the parameters whose name starts with a
    prefix of ``multipliers`` (the longest matching prefix wins), ``lr`` for the rest.

    The base group comes first, so ``scheduler.get_last_lr()[0]`` stays the base rate; each other
    group carries its ``prefix`` for logging. ``LambdaLR`` scales every group by the same warm-up +
    cosine multiplier. A prefix that matches no parameter is an error (a typo would otherwise train
    at the base rate without a word).
    """
    for prefix, multiplier in multipliers.items():
        if multiplier <= 0:
            raise ValueError(f"train.lr_multipliers[{prefix!r}]={multiplier} must be > 0")
        if not any(name.startswith(prefix) for name, _ in named_parameters):
            raise ValueError(
                f"train.lr_multipliers: prefix {prefix!r} matches no trained parameter; "
                f"the trained parameters start with {sorted({n.split('.')[0] for n, _ in named_parameters})} "
                "(use full dotted prefixes such as 'sam.sam.sam_mask_decoder')"
            )
    by_prefix: dict[str | None, list[torch.nn.Parameter]] = {None: []}
    for name, param in named_parameters:
        matches = [p for p in multipliers if name.startswith(p)]
        by_prefix.setdefault(max(matches, key=len) if matches else None, []).append(param)
    groups = [{"params": by_prefix.pop(None), "lr": lr, "prefix": ""}]
    groups += [{"params": params, "lr": lr * multipliers[prefix], "prefix": prefix} for prefix, params in by_prefix.items()]
    return [g for g in groups if g["params"]]
