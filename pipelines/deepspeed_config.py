"""The DeepSpeed configuration of a training run, resolved from ``TrainConfig`` and the resources.

On GPUs the recipe is bf16 with NCCL; on CPU it is fp32 with gloo (DeepSpeed has no fp16 on CPU,
and bf16 works there but is slow). ``train.use_gpu`` and ``train.precision`` override the choice.
Everything here is plain data, so both paths are unit-tested on a machine without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pipelines.config import TrainConfig

# DeepSpeed prints its own throughput every `steps_per_print` steps; the pipeline logs its own.
_NEVER = 2**31 - 1


@dataclass(frozen=True)
class DistributedSetup:
    """Where and how the workers compute: device kind, torch.distributed backend, precision."""

    use_gpu: bool
    backend: Literal["gloo", "nccl"]
    precision: Literal["fp32", "bf16"]
    torch_adam: bool


def resolve_distributed_setup(train: TrainConfig, *, gpus_available: bool) -> DistributedSetup:
    """``use_gpu: null`` follows the cluster; ``precision: auto`` is bf16 on GPU, fp32 on CPU;
    ``torch_adam: null`` uses torch's AdamW on CPU (DeepSpeed's FusedAdam compiles C++ there)."""
    use_gpu = gpus_available if train.use_gpu is None else train.use_gpu
    if use_gpu and not gpus_available:
        raise ValueError(
            "train.use_gpu=true but the cluster has no GPUs; set train.use_gpu=null to follow the "
            "cluster or false to train on CPU"
        )
    precision = train.precision if train.precision != "auto" else ("bf16" if use_gpu else "fp32")
    torch_adam = (not use_gpu) if train.torch_adam is None else train.torch_adam
    return DistributedSetup(
        use_gpu=use_gpu, backend="nccl" if use_gpu else "gloo", precision=precision, torch_adam=torch_adam
    )


def deepspeed_config(train: TrainConfig, setup: DistributedSetup) -> dict[str, Any]:
    """The ``config`` dict for ``deepspeed.initialize``.

    The global batch is left for DeepSpeed to derive (micro-batch × accumulation × world size), so
    the same config serves any number of workers. The learning-rate schedule is not in here: the
    pipeline passes its own warm-up + cosine schedule (``pipelines.lr_schedule``).
    """
    return {
        "train_micro_batch_size_per_gpu": train.batch_size_per_worker,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {
            "stage": train.zero_stage,
            "contiguous_gradients": True,
            # Overlapping the reduction with the backward pass needs CUDA streams.
            "overlap_comm": setup.use_gpu,
        },
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": train.lr,
                "betas": list(train.betas),
                "eps": 1e-8,
                "weight_decay": train.weight_decay,
                "torch_adam": setup.torch_adam,
                # torch's AdamW on its multi-tensor path: the numbers of its per-tensor loop (the
                # CPU default) in less time where there are many tensors (ZeRO stage 0; stages 1-2
                # step flat partitions). DeepSpeed's own optimizers take no such option.
                **({"foreach": True} if setup.torch_adam else {}),
            },
        },
        "bf16": {"enabled": setup.precision == "bf16"},
        "fp16": {"enabled": False},
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
    }
