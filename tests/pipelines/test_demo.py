"""``salma demo``: the Gradio app, driven through its HTTP API with gradio_client, returns a mask
and an overlay; without the ``demo`` extra the command names the install command."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
from PIL import Image

from pipelines.demo import INSTALL, MissingExtraError, require_gradio


def test_a_missing_extra_names_the_install_command(monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if it were not installed
    with pytest.raises(MissingExtraError, match="demo"):
        require_gradio()
    assert main(["demo", "--model", "tiny"]) == 2
    assert INSTALL in capsys.readouterr().err


def test_the_app_segments_an_uploaded_image_and_has_synthetic_examples(synthetic_data, tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from gradio_client import Client, handle_file

    from pipelines.demo import DemoModel, build_app, synthetic_examples
    from pipelines.segment import load_predictor

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    examples = synthetic_examples(synthetic_data)
    assert examples and all(Image.open(path).size and text for path, text in examples)
    app = build_app(DemoModel(load_predictor("tiny"), tmp_path), examples)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, share=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        overlay, mask, answer = client.predict(handle_file(examples[0][0]), examples[0][1], True,
                                               api_name="/segment_image")
    finally:
        app.close()
    picture = np.asarray(Image.open(examples[0][0]).convert("RGB"))
    mask = np.asarray(Image.open(mask))
    assert "[SEG]" in answer
    assert mask.shape[:2] == picture.shape[:2] and set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(overlay)).shape[:2] == picture.shape[:2]


def test_an_unreadable_video_gets_a_message_in_the_app(tmp_path):
    from pipelines.demo import DemoModel
    from pipelines.segment import load_predictor

    video = tmp_path / "noise.mp4"
    video.write_bytes(bytes(range(256)) * 20)
    overlay, answer = DemoModel(load_predictor("tiny"), tmp_path).segment_video(str(video), "the square", True)
    assert overlay is None and answer == f"cannot read this video: {video}: unreadable video"
