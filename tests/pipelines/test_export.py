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
    built = load_checkpoint_model(trained.checkpoint_path)
    state = load_model_state(trained.checkpoint_path)
    own = built.model.state_dict()
    assert all(torch.equal(own[k], v.reshape(own[k].shape)) for k, v in state.items())


def test_export_from_a_run_folder_round_trips_predictions(trained, tmp_path):
    assert main(["--checkpoint", trained.run_dir, "--out", str(tmp_path / "out"), "--no-tracking"]) == 0
    reloaded = load_exported(tmp_path / "out")
    original = load_checkpoint_model(trained.checkpoint_path)
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    a = SalmaPredictor(original).segment(image, "the red circle", generate=False)
    b = SalmaPredictor(reloaded).segment(image, "the red circle", generate=False)
    assert np.array_equal(a.masks[0], b.masks[0])


def test_a_folder_without_checkpoints_is_refused(tmp_path):
    with pytest.raises(InvalidCheckpointError, match="neither a checkpoint"):
        export_checkpoint(tmp_path, tmp_path / "out")


def test_export_logs_an_mlflow_model_that_loads_registers_and_predicts(trained, tmp_path):
    import json

    import mlflow
    import pandas as pd

    from pipelines.mlflow_model import input_example
    from pipelines.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
    from pipelines.run_folder import RunFolder
    from salma.data.masks import decode_rle

    assert main(["--checkpoint", trained.run_dir, "--out", str(tmp_path / "model"), "--register", "salma-tiny-test"]) == 0
    uri = RunFolder.existing(trained.run_dir).run_info()["tracking_uri"]
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pyfunc.load_model(f"runs:/{trained.run_id}/model")
    assert loaded.metadata.signature.inputs.input_names() == ["expression", "image", "frames"]
    frames = np.random.default_rng(1).integers(0, 255, (3, 40, 56, 3), dtype=np.uint8)
    table = pd.DataFrame({"expression": ["the red square", "the moving square"],
                          "image": [input_example()["image"][0], None], "frames": [None, [_png(f) for f in frames]]})
    out = loaded.predict(table, params={"generate": False})
    assert list(out.columns) == ["answer", "num_masks", "masks"] and len(out) == 2
    image_masks, video_masks = (json.loads(m) for m in out["masks"])
    assert [len(image_masks), len(video_masks)] == [1, 3]
    reference = SalmaPredictor(load_exported(tmp_path / "model"))
    expected = reference.segment(frames, "the moving square", generate=False).masks[0]  # (T, H, W)
    assert np.array_equal(np.stack([decode_rle(r) for r in video_masks]), expected)
    registered = mlflow.pyfunc.load_model("models:/salma-tiny-test/1")
    assert registered.predict(input_example(), params={"generate": False})["num_masks"].tolist() == [1]
    client = mlflow.MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(trained.run_id, "checkpoints")] == [
        "checkpoints/checkpoint_000002.json"]
    experiment = client.get_experiment(client.get_run(trained.run_id).info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND  # the UI shows it as model training


def test_register_needs_a_tracked_run(trained, tmp_path):
    from pipelines.config_errors import ConfigError

    with pytest.raises(ConfigError, match="--register needs a checkpoint of a tracked training run"):
        main(["--checkpoint", trained.run_dir, "--out", str(tmp_path / "m"), "--register", "x", "--no-tracking"])


def _png(frame: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def test_export_writes_the_training_dtype_and_the_runs_scores_into_the_model_card(trained, tmp_path):
    import json

    from mlflow import MlflowClient

    from pipelines.run_folder import RunFolder

    info = RunFolder.existing(trained.run_dir).run_info()
    MlflowClient(tracking_uri=info["tracking_uri"]).log_metric(info["mlflow_run_id"], "eval/refcoco_val/ciou", 12.5)
    scores_csv = tmp_path / "scores.csv"
    scores_csv.write_text("benchmark,format,split,group,metric,value\nmevis_valid_u,mevis,valid_u,all,J&F,33.250000\n")
    assert main(["--checkpoint", trained.run_dir, "--out", str(tmp_path / "out"), "--scores", str(scores_csv)]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| refcoco_val | ciou | 12.50 |" in card and "| mevis_valid_u | jf | 33.25 |" in card
    assert "checkpoint_000002" in card
    # A CPU run trains in fp32 (precision auto), and the export keeps it.
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float32"


def test_pyfunc_rows_about_one_picture_share_a_key():
    import pandas as pd

    from pipelines.mlflow_model import _media_key

    rows = pd.DataFrame({"expression": ["a", "b", "c"], "image": [b"png-one", b"png-one", b"png-two"]})
    keys = [_media_key(row, i) for i, row in rows.iterrows()]
    assert keys[0] == keys[1] != keys[2]
    video = pd.Series({"expression": "a", "frames": [b"png-one"]})
    assert _media_key(video, 0) != keys[0]  # an image and a one-frame video are not grouped
    with pytest.raises(ValueError, match="row 4"):
        _media_key(pd.Series({"expression": "a"}), 4)
