"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def photo() -> Path:
    """A real photo, shipped with matplotlib (not a synthetic scene)."""
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """The tiny preset (random weights, seed 0) exported as a model folder. Read-only: tests
    that damage it work on a copy."""
    import torch

    from salma.builder import build_salma
    from salma.export import export_model
    from salma.testing import tiny_salma_config

    torch.manual_seed(0)
    return export_model(build_salma(tiny_salma_config()), tmp_path_factory.mktemp("export") / "tiny")


@pytest.fixture(scope="session")
def reference_run(ray_cluster, tiny_experiment, tmp_path_factory):
    """An uninterrupted 4-step local-mode run, checkpoints after steps 2 and 4: (config, result).
    Tests that damage or resume it work on a copy (``run_copies.copy_run``)."""
    from pipelines.train import train

    folder = tmp_path_factory.mktemp("reference")
    cfg = tiny_experiment(folder)
    return cfg, train(cfg)
