"""Where DeepSpeed's compiled ops live: in the Python environment that uses them, built with its
own ninja, so that the op ``make env`` compiles is the one every training worker of that
environment loads (two clones with two venvs on one account, or processes whose PATH names
different ninjas, no longer rebuild each other's op)."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

from pipelines.deepspeed_ops import EXTENSIONS_ENV_VAR, build_cpu_comm_op, extensions_dir, use_environment_extensions


def test_the_folder_is_inside_the_environment_and_a_users_choice_wins(monkeypatch, tmp_path):
    assert extensions_dir().is_relative_to(sys.prefix)
    monkeypatch.delenv(EXTENSIONS_ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert use_environment_extensions() == str(extensions_dir()) == os.environ[EXTENSIONS_ENV_VAR]
    ninja = Path(sysconfig.get_path("scripts")) / "ninja"  # DeepSpeed requires the pip package
    assert ninja.is_file() and shutil.which("ninja") == str(ninja)
    monkeypatch.setenv(EXTENSIONS_ENV_VAR, str(tmp_path))
    assert use_environment_extensions() == str(tmp_path)


@pytest.mark.ray
def test_a_ray_training_worker_loads_the_op_compiled_at_install_without_compiling(
    ray_cluster, tiny_experiment, tmp_path, monkeypatch
):
    import ray

    scripts = sysconfig.get_path("scripts")
    other_path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != scripts)

    def start_engine(cfg) -> tuple[str, list[str]]:
        """What a training worker does at start (``build_engine`` on its process group), in a Ray
        worker that knows nothing of the folder and whose PATH starts with the venv's scripts (as
        on the nodes of cluster/local_cluster.sh); returns the folder it used and the DeepSpeed
        comm op files mapped into the process. (Nested: Ray pickles it by value.)"""
        from pipelines.deepspeed_config import resolve_distributed_setup
        from pipelines.train import _process_group, build_engine

        os.environ.pop(EXTENSIONS_ENV_VAR, None)
        os.environ["PATH"] = os.pathsep.join([scripts, other_path])
        setup = resolve_distributed_setup(cfg.train, gpus_available=False)
        with _process_group(setup):
            build_engine(cfg, setup)
            maps = Path("/proc/self/maps").read_text().splitlines()
        mapped = {line.split()[-1] for line in maps if "shm_comm" in line}
        return os.environ.get(EXTENSIONS_ENV_VAR, ""), sorted(mapped)

    # Here, as in a shell that has not activated the venv: the system's ninja, if any, comes first.
    monkeypatch.setenv("PATH", other_path)
    monkeypatch.delenv(EXTENSIONS_ENV_VAR, raising=False)
    assert build_cpu_comm_op()  # what `make env` runs (compiles here only if the install did not)
    (library,) = (extensions_dir() / "deepspeed_shm_comm").glob("*.so")
    built = library.stat().st_mtime_ns

    # A fresh worker process (a runtime_env of its own), as Ray Train starts for each run.
    task = ray.remote(num_cpus=1, max_calls=1)(start_engine).options(
        runtime_env={"env_vars": {"SALMA_TEST_WORKER": uuid.uuid4().hex}}
    )
    folder, mapped = ray.get(task.remote(tiny_experiment(tmp_path)))

    assert folder == str(extensions_dir())
    assert mapped == [str(library)]
    assert library.stat().st_mtime_ns == built, "the worker compiled the op again"
