"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def reference_run(ray_cluster, tiny_experiment, tmp_path_factory):
    """An uninterrupted 4-step local-mode run, checkpoints after steps 2 and 4: (config, result).
    Tests that damage or resume it work on a copy (``run_copies.copy_run``)."""
    from pipelines.train import train

    folder = tmp_path_factory.mktemp("reference")
    cfg = tiny_experiment(folder)
    return cfg, train(cfg)
