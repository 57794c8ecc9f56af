"""Fixtures shared by the whole suite: a private local Ray cluster, a tiny synthetic dataset, and
a factory for tiny training experiments on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SYNTHETIC_SEED = 7


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A private Ray cluster for the session (4 logical CPUs, no dashboard); yields its address.
    See ``pipelines.local_ray`` for why it is more than ``ray.init(address="local")``."""
    from pipelines.local_ray import local_ray

    with local_ray(num_cpus=4) as address:
        yield address


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """The synthetic datasets in their public formats, small enough to decode in milliseconds."""
    from salma.data.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("synthetic-train")
    write_synthetic(out, seed=SYNTHETIC_SEED, num_images=8, num_videos=2)
    return out


@pytest.fixture(scope="session")
def tiny_experiment(synthetic_data) -> Callable[..., "object"]:
    """``tiny_experiment(folder, "train.max_steps=4", ...)``: the tiny model on the synthetic
    RefCOCO and MeViS data, local mode, runs and MLflow (SQLite) under ``folder``; overrides on
    top."""
    from pipelines.config import load_experiment

    def make(folder: Path, *overrides: str):
        base = [
            f"workdir={folder / 'runs'}",
            f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
            "name=tiny",
            "model.preset=tiny",
            "data.num_frames=2",
            "data.max_objects=2",
            "data.cpus_per_task=0.25",
            "data.sources=[{name: refcoco, format: refcoco, root: %s}, {name: mevis, format: mevis, root: %s}]"
            % (synthetic_data / "refer" / "refcoco", synthetic_data / "mevis"),
            "train.num_workers=0",
            "train.batch_size_per_worker=1",
            "train.max_steps=4",
            "train.checkpoint_every=2",
            "train.keep_checkpoints=2",
            "train.log_every=1",
            "train.lr=1e-3",
        ]
        return load_experiment(None, base + list(overrides))

    return make


@pytest.fixture(scope="session")
def sa2va_release(tmp_path_factory) -> Path:
    """A tiny replica of a released Sa2VA-1B folder (``salma.release_replicas``): its layout,
    config fields, tensor names and token ids, with a tiny InternVL and a tiny SAM-2.0."""
    from salma.config import tiny_config
    from salma.release_replicas import tiny_sizes, write_sa2va_release

    folder = tmp_path_factory.mktemp("releases") / "Sa2VA-1B"
    return write_sa2va_release(folder, tiny_sizes(), sam_version="2.0", sam_hiera="tiny",
                               sam_overrides=tiny_config().sam.overrides, sam_image_size=128, seed=2)  # fmt: skip


@pytest.fixture(scope="session")
def sa2va_export(sa2va_release, tmp_path_factory) -> Path:
    """``sa2va_release`` converted by ``salma convert sa2va`` (the Sa2VA baseline as a SALMA export)."""
    from salma.config import tiny_config
    from salma.sa2va_conversion import convert_sa2va

    out = tmp_path_factory.mktemp("converted") / "Sa2VA-1B-salma"
    convert_sa2va(sa2va_release, out, sam_config="sam2_hiera_t",
                  sam_overrides=[*tiny_config().sam.overrides, "++model.image_size=128"])  # fmt: skip
    return out
