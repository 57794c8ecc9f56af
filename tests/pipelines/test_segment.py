"""``salma segment`` on a real photo (shipped with matplotlib), a video file and a frame folder:
the answer is printed, the masks and the overlay are written, and no Ray is involved."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipelines.config_errors import ConfigError
from pipelines.segment import main, read_media

ROOT = Path(__file__).resolve().parents[2]


def test_a_photo_gives_an_answer_a_mask_and_an_overlay_without_ray(photo, tmp_path):
    out = tmp_path / "hopper.png"
    code = (
        "import sys; from pipelines.cli import main; rc = main(sys.argv[1:]); "
        "assert not {'ray', 'mlflow', 'deepspeed'} & set(sys.modules), 'segment imported Ray or MLflow'; sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "segment", str(photo), "the woman's face", "--model", "tiny", "--teacher-force",
         "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "answer: " in done.stdout and "[SEG]" in done.stdout
    width, height = Image.open(photo).size
    mask = np.asarray(Image.open(tmp_path / "hopper_mask.png"))
    overlay = np.asarray(Image.open(out))
    assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
    assert overlay.shape == (height, width, 3)
    original = np.asarray(Image.open(photo).convert("RGB"))
    changed = np.any(overlay != original, axis=2)
    assert changed[mask == 255].mean() > 0.9  # the mask is drawn where it is
    assert not changed[mask == 0].all()  # and the picture is still there


def test_a_video_file_gives_an_overlay_video_and_a_mask_per_frame(tmp_path, capsys):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 8, (64, 48))
    for t in range(6):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[10:30, 5 + 6 * t : 25 + 6 * t] = (0, 0, 220)
        writer.write(frame)
    writer.release()
    out = tmp_path / "result.mp4"
    assert main([str(video), "the red square", "--model", "tiny", "--teacher-force", "--out", str(out),
                 "--frame-stride", "2", "--num-key-frames", "2"]) == 0
    masks = sorted((tmp_path / "result_mask").glob("*.png"))
    assert [p.stem for p in masks] == ["00000", "00002", "00004"]
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    ok, first = capture.read()
    capture.release()
    assert ok and first.shape == (48, 64, 3)
    assert "overlay: " in capsys.readouterr().out


def test_a_frame_folder_gives_a_folder_of_overlay_frames(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(frames / f"{name}.jpg")
    assert main([str(frames), "the grey wall", "--model", "tiny", "--teacher-force", "--out", str(tmp_path / "o"),
                 "--num-key-frames", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]
    assert sorted(p.name for p in (tmp_path / "o_mask").iterdir()) == ["a.png", "b.png", "c.png"]


def test_unusable_inputs_are_clear_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match="not an image"):
        read_media(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no frames"):
        read_media(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        read_media(tmp_path / "missing.jpg")
