"""The DeepSpeed setup resolved from TrainConfig and the resources: both the CPU and the GPU
recipe are checked here, on CPU (no GPU is needed to resolve a config)."""

from __future__ import annotations

import pytest
import torch

from pipelines.config import TrainConfig
from pipelines.deepspeed_config import DistributedSetup, deepspeed_config, resolve_distributed_setup


def test_cpu_resolves_to_fp32_gloo_and_torch_adam():
    train = TrainConfig(grad_accum=4, batch_size_per_worker=3, grad_clip=1.0, lr=4e-5, weight_decay=0.05)
    setup = resolve_distributed_setup(train, gpus_available=False)
    assert setup == DistributedSetup(use_gpu=False, backend="gloo", precision="fp32", torch_adam=True)
    ds = deepspeed_config(train, setup)
    assert ds["bf16"] == {"enabled": False} and ds["fp16"] == {"enabled": False}
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["overlap_comm"] is False
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert "train_batch_size" not in ds  # derived by DeepSpeed from the world size
    assert ds["gradient_clipping"] == 1.0
    assert ds["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": 4e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.05, "torch_adam": True,
                   "foreach": True},
    }
    assert "scheduler" not in ds  # the pipeline passes its own warm-up + cosine schedule


def test_gpu_resolves_to_bf16_nccl_and_fused_adam():
    train = TrainConfig()
    setup = resolve_distributed_setup(train, gpus_available=True)
    assert setup == DistributedSetup(use_gpu=True, backend="nccl", precision="bf16", torch_adam=False)
    ds = deepspeed_config(train, setup)
    assert ds["bf16"] == {"enabled": True}
    assert ds["zero_optimization"]["overlap_comm"] is True
    assert ds["optimizer"]["params"]["torch_adam"] is False


@pytest.mark.parametrize(
    ("fields", "gpus", "expected"),
    [
        ({"precision": "fp32"}, True, DistributedSetup(True, "nccl", "fp32", False)),
        ({"precision": "bf16"}, False, DistributedSetup(False, "gloo", "bf16", True)),
        ({"use_gpu": False}, True, DistributedSetup(False, "gloo", "fp32", True)),
        ({"torch_adam": True}, True, DistributedSetup(True, "nccl", "bf16", True)),
        ({"zero_stage": 1}, False, DistributedSetup(False, "gloo", "fp32", True)),
    ],
)
def test_overrides(fields, gpus, expected):
    train = TrainConfig(**fields)
    setup = resolve_distributed_setup(train, gpus_available=gpus)
    assert setup == expected
    assert deepspeed_config(train, setup)["zero_optimization"]["stage"] == train.zero_stage


def test_gpu_requested_without_gpus_is_an_error_that_says_what_to_do():
    with pytest.raises(ValueError, match="use_gpu=null"):
        resolve_distributed_setup(TrainConfig(use_gpu=True), gpus_available=False)


def test_the_cpu_comm_op_builds_on_a_cpu_machine():
    """``make env`` compiles DeepSpeed's CPU comm op (``python -m pipelines.deepspeed_ops``); on a
    CPU accelerator the op applies and then loads from torch's extension cache."""
    from pipelines.deepspeed_ops import build_cpu_comm_op

    assert build_cpu_comm_op() is True


def test_cpu_engine_steps_with_torch_adamw_on_its_multi_tensor_path(tiny_experiment, tmp_path):
    from pipelines.train import _process_group, build_engine

    cfg = tiny_experiment(tmp_path)
    setup = resolve_distributed_setup(cfg.train, gpus_available=False)
    with _process_group(setup):
        optimizer = build_engine(cfg, setup).engine.optimizer.optimizer  # inside DeepSpeed's ZeRO wrapper
    assert type(optimizer) is torch.optim.AdamW
    assert all(group["foreach"] for group in optimizer.param_groups)


def test_torch_adamw_multi_tensor_path_gives_the_per_tensor_numbers_on_cpu():
    """Why foreach is on: on CPU it is the same arithmetic as the default per-tensor loop."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(7,), (3, 5), (2, 3, 4), (1,), (16, 16)]
    params = {mode: [torch.randn(s, generator=torch.Generator().manual_seed(i)).requires_grad_() for i, s in
                     enumerate(shapes)] for mode in (False, True)}
    optimizers = {mode: torch.optim.AdamW(params[mode], lr=1e-2, weight_decay=0.05, foreach=mode) for mode in params}
    for _ in range(5):
        grads = [torch.randn(s, generator=generator) for s in shapes]
        for mode, optimizer in optimizers.items():
            for p, g in zip(params[mode], grads):
                p.grad = g.clone()
            optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(params[False], params[True]))
    assert not torch.equal(params[True][0], torch.randn(7, generator=torch.Generator().manual_seed(0)))  # it moved
