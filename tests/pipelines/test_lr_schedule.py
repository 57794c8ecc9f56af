"""5% linear warm-up, then cosine to zero, as a function of the optimizer step."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines.lr_schedule import parameter_groups, warmup_cosine, warmup_cosine_scheduler, warmup_steps


def test_warmup_is_linear_and_first_step_learns():
    assert warmup_steps(100, 0.05) == 5
    values = [warmup_cosine(s, total_steps=100, warmup_fraction=0.05) for s in range(5)]
    assert values == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_cosine_after_warmup():
    total, fraction = 100, 0.05
    assert warmup_cosine(5, total_steps=total, warmup_fraction=fraction) == pytest.approx(1.0)
    halfway = 5 + 95 // 2
    assert warmup_cosine(halfway, total_steps=total, warmup_fraction=fraction) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * (halfway - 5) / 95))
    )
    last = warmup_cosine(99, total_steps=total, warmup_fraction=fraction)
    assert 0.0 < last < 1e-3
    values = [warmup_cosine(s, total_steps=total, warmup_fraction=fraction) for s in range(5, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_no_warmup():
    assert warmup_cosine(0, total_steps=10, warmup_fraction=0.0) == pytest.approx(1.0)


def test_scheduler_state_resumes_the_same_curve():
    def run(steps, state=None):
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=0.1)
        sched = warmup_cosine_scheduler(opt, total_steps=20, warmup_fraction=0.05)
        if state is not None:
            sched.load_state_dict(state)
        lrs = []
        for _ in range(steps):
            lrs.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return lrs, sched.state_dict()

    full, _ = run(20)
    first, state = run(7)
    rest, _ = run(13, state)
    assert first + rest == full
    assert full[0] == pytest.approx(0.1 * warmup_cosine(0, total_steps=20, warmup_fraction=0.05))


def _named(*names):
    return [(name, torch.nn.Parameter(torch.zeros(1))) for name in names]


def test_parameter_groups_scale_by_the_longest_matching_prefix():
    named = _named("mllm.a", "sam.sam.image_encoder.w", "sam.sam.sam_mask_decoder.w", "sam.sam.sam_mask_decoder.x")
    groups = parameter_groups(named, lr=1e-3, multipliers={"sam.sam": 0.5, "sam.sam.sam_mask_decoder": 0.1})
    assert [(g["prefix"], g["lr"], len(g["params"])) for g in groups] == [
        ("", 1e-3, 1), ("sam.sam", 5e-4, 1), ("sam.sam.sam_mask_decoder", pytest.approx(1e-4), 2)
    ]
    assert parameter_groups(named, lr=1e-3, multipliers={})[0]["params"] == [p for _, p in named]


def test_parameter_groups_follow_the_schedule_and_reject_typos():
    named = _named("mllm.a", "sam.b")
    opt = torch.optim.SGD(parameter_groups(named, lr=0.1, multipliers={"sam": 0.3}), lr=0.1)
    sched = warmup_cosine_scheduler(opt, total_steps=20, warmup_fraction=0.05)
    for _ in range(3):
        opt.step()
        sched.step()
    base, scaled = sched.get_last_lr()
    assert scaled == pytest.approx(0.3 * base)
    with pytest.raises(ValueError, match="'sma' matches no trained parameter"):
        parameter_groups(named, lr=0.1, multipliers={"sma": 0.3})
    with pytest.raises(ValueError, match="must be > 0"):
        parameter_groups(named, lr=0.1, multipliers={"sam": 0.0})
