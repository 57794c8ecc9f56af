"""Compile DeepSpeed's CPU communication op ahead of time: ``python -m pipelines.deepspeed_ops``.

On a CPU accelerator every ``deepspeed.initialize`` loads DeepSpeed's shared-memory all-reduce op
(``deepspeed_shm_comm``) and, the first time on a machine, compiles it with the system C++
compiler into torch's extension cache (``$TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``): about a minute on 2 cores, during which the first training run
shows nothing but DeepSpeed's "built successfully". ``make env`` runs this module once after
installing, so that compile happens at install time; later loads take well under a second. On a
GPU accelerator there is nothing to build and it says so.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)


def build_cpu_comm_op() -> bool:
    """Build (or load from the cache) the CPU shared-memory comm op; False when it does not apply
    (another accelerator, or DeepSpeed reports the op incompatible with this machine)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    builder = accelerator.create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        logger.info("no DeepSpeed CPU comm op to build on the %s accelerator", accelerator.device_name())
        return False
    start = time.perf_counter()
    builder.load(verbose=False)
    logger.info("DeepSpeed %s ready (%.0f s)", builder.absolute_name(), time.perf_counter() - start)
    return True


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_cpu_comm_op()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
