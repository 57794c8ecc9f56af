"""DeepSpeed's compiled ops: where they live, and the CPU communication op compiled ahead of time.

``python -m pipelines.deepspeed_ops`` (run by ``make env``) compiles DeepSpeed's shared-memory
all-reduce op (``deepspeed_shm_comm``), which every ``deepspeed.initialize`` on a CPU accelerator
loads and, the first time, compiles with the system C++ compiler: about a minute on 2 cores. On a
GPU accelerator there is nothing to build and it says so.

Where: torch keeps JIT-compiled extensions in ``$TORCH_EXTENSIONS_DIR``, by default one folder per
machine account (``~/.cache/torch_extensions``). Its build files record the paths of the Python
environment that compiled them, so with two environments on one account (two clones, each with its
own ``.venv``) each one's first load finds the other's build and compiles again. The platform
therefore keeps the compiled ops inside the environment that uses them,
``<sys.prefix>/var/salma/torch_extensions`` (``extensions_dir``): ``use_environment_extensions``
points ``$TORCH_EXTENSIONS_DIR`` there in every process that starts DeepSpeed (the training
workers call it in ``pipelines.train.build_engine``, Ray workers included, since each computes the
folder from its own interpreter), so the op compiled at install time is the one every run of that
environment loads. A ``$TORCH_EXTENSIONS_DIR`` set by the user wins; an environment whose folder
cannot be created (a read-only install) keeps torch's default.

With which ninja: torch runs whichever ``ninja`` the PATH names, and two ninja versions (a system
one for processes started from a shell, the venv's for Ray nodes started from the venv) rewrite
each other's build log in their own format, each then finding no record of the build and
compiling again. ``use_environment_extensions`` therefore also puts the environment's own ninja
(the pip package DeepSpeed requires) first on ``$PATH``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

logger = logging.getLogger(__name__)

EXTENSIONS_ENV_VAR = "TORCH_EXTENSIONS_DIR"


def extensions_dir() -> Path:
    """The compiled-extensions folder of the running Python environment."""
    return Path(sys.prefix) / "var" / "salma" / "torch_extensions"


def use_environment_ninja() -> None:
    """Put the environment's scripts folder first on ``$PATH`` when it holds a ``ninja`` that is
    not the one the PATH names already."""
    scripts = sysconfig.get_path("scripts")
    ninja = os.path.join(scripts, "ninja")
    if os.path.isfile(ninja) and shutil.which("ninja") != ninja:
        os.environ["PATH"] = os.pathsep.join([scripts, os.environ.get("PATH", "")])


def use_environment_extensions() -> str | None:
    """Point ``$TORCH_EXTENSIONS_DIR`` at ``extensions_dir()`` unless it is set already, and build
    with the environment's ninja; returns the folder in use (None: torch's default, when the
    environment's folder cannot be created)."""
    use_environment_ninja()
    if os.environ.get(EXTENSIONS_ENV_VAR):
        return os.environ[EXTENSIONS_ENV_VAR]
    folder = extensions_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        logger.info("compiled ops stay in torch's default folder: cannot create %s (%s)", folder, err)
        return None
    os.environ[EXTENSIONS_ENV_VAR] = str(folder)
    return str(folder)


def build_cpu_comm_op() -> bool:
    """Build (or load from the environment's folder) the CPU shared-memory comm op; False when it
    does not apply (another accelerator, or DeepSpeed reports the op incompatible with this
    machine)."""
    use_environment_extensions()
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    builder = accelerator.create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        logger.info("no DeepSpeed CPU comm op to build on the %s accelerator", accelerator.device_name())
        return False
    start = time.perf_counter()
    builder.load(verbose=False)
    logger.info(
        "DeepSpeed %s ready in %s (%.0f s)",
        builder.absolute_name(), os.environ.get(EXTENSIONS_ENV_VAR), time.perf_counter() - start,
    )
    return True


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_cpu_comm_op()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
