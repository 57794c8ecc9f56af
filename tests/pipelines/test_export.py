"""``salma export``: a training checkpoint becomes a folder the predictor loads, weights intact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.checkpoint import InvalidCheckpointError, load_model_state
from pipelines.export import export_checkpoint, load_checkpoint_model, main
from pipelines.train import train
from salma.export import load_exported
from salma.predictor import SalmaPredictor

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def trained(ray_cluster, tiny_experiment, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    return train(tiny_experiment(folder, "train.max_steps=2"))


def test_checkpoint_weights_load_into_the_model(trained):
    model = load_checkpoint_model(trained.checkpoint_path)
    state = load_model_state(trained.checkpoint_path)
    own = model.state_dict()
    assert all(torch.equal(own[k], v.reshape(own[k].shape)) for k, v in state.items())


def test_export_from_a_run_folder_round_trips_predictions(trained, tmp_path):
    assert main(["--checkpoint", trained.run_dir, "--out", str(tmp_path / "out")]) == 0
    reloaded = load_exported(tmp_path / "out")
    original = load_checkpoint_model(trained.checkpoint_path)
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    a = SalmaPredictor(original).segment(image, "the red circle", generate=False)
    b = SalmaPredictor(reloaded).segment(image, "the red circle", generate=False)
    assert np.array_equal(a.masks[0], b.masks[0])


def test_a_folder_without_checkpoints_is_refused(tmp_path):
    with pytest.raises(InvalidCheckpointError, match="neither a checkpoint"):
        export_checkpoint(tmp_path, tmp_path / "out")
