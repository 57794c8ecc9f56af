"""The own-data format: a folder and a hand-written JSON Lines file (``salma.data.own_data``)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from salma.data.decode import decode_masks, load_frames
from salma.data.errors import DatasetFormatError
from salma.data.masks import decode_rle, encode_mask
from salma.data.own_data import read_own_data
from salma.testing import write_own_data_example


def _write_lines(root: Path, name: str, lines: list) -> None:
    (root / f"{name}.jsonl").write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))


def test_example_folder_reads_images_and_frame_folders_with_their_masks(tmp_path):
    counts = write_own_data_example(tmp_path, num_images=3, num_videos=1)
    records = read_own_data(tmp_path, "train")
    assert sum(len(r.expressions) for rec in records for r in rec.referents) == counts["train"]
    image = next(r for r in records if r.media == "image")
    assert image.sample_id == "photos/photo00.png" and image.meta["has_ground_truth"]
    png = np.asarray(Image.open(tmp_path / "masks" / "photo00_0.png")) > 0
    assert np.array_equal(decode_rle(image.referents[0].masks[0]), png)
    video = next(r for r in records if r.media == "video")
    assert video.num_frames == 4 and len(load_frames(video, range(4))) == 4
    stack = decode_masks(video.referents[1], range(4), video.height, video.width)  # (T, H, W)
    for t in range(4):
        expected = np.asarray(Image.open(tmp_path / "masks" / f"{video.sample_id.split('/')[-1]}_1" / f"{t:05d}.png")) > 0
        assert np.array_equal(stack[t], expected)


def test_lines_without_masks_are_records_without_ground_truth(tmp_path):
    write_own_data_example(tmp_path, num_images=2, num_videos=0, with_masks=False)
    records = read_own_data(tmp_path, "train")
    assert records and all(not r.meta["has_ground_truth"] for r in records)
    assert all(m is None for r in records for ref in r.referents for m in ref.masks)


def test_same_image_on_several_lines_is_one_record_and_lists_are_phrasings(tmp_path):
    write_own_data_example(tmp_path, num_images=1, num_videos=0)
    mask = np.zeros((96, 128), bool)
    mask[10:20, 30:50] = True
    _write_lines(tmp_path, "mine", [
        {"image": "photos/photo00.png", "expression": ["the box", "  the  small box "], "mask": encode_mask(mask), "id": "box"},
        {"image": "./photos/photo00.png", "expression": "the rest", "mask": "masks/photo00_1.png"},
    ])
    [record] = read_own_data(tmp_path, "mine")
    assert [r.ref_id for r in record.referents] == ["box", "line2"]
    assert record.referents[0].expressions == ["the box", "the small box"]
    assert np.array_equal(decode_rle(record.referents[0].masks[0]), mask)


def test_a_video_file_with_a_mask_folder_named_by_frame_number(tmp_path):
    frames = [np.full((48, 64, 3), 40 * t, np.uint8) for t in range(5)]
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for frame in frames:
        writer.write(frame)
    writer.release()
    (tmp_path / "m").mkdir()
    for t in (0, 2, 4):
        Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), ((t, 40 - t), (0, 56)))).save(tmp_path / "m" / f"{t:05d}.png")
    _write_lines(tmp_path, "train", [{"video": "clip.avi", "expression": "the thing", "mask": "m"}])
    [record] = read_own_data(tmp_path, "train", frame_stride=2)
    assert record.video_path and record.frame_indices == [0, 2, 4]
    assert [m is not None for m in record.referents[0].masks] == [True, True, True]
    assert len(load_frames(record, range(3))) == 3
    [every] = read_own_data(tmp_path, "train")
    assert [m is None for m in every.referents[0].masks] == [False, True, False, True, False]


def test_bad_lines_are_reported_with_file_line_and_reason_and_the_rest_is_read(tmp_path):
    write_own_data_example(tmp_path, num_images=2, num_videos=0)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    _write_lines(tmp_path, "mixed", [
        {"image": "../outside.jpg", "expression": "a"},
        "not json at all",
        {"image": "photos/photo00.png", "expression": "   "},
        {"image": "photos/photo00.png", "expression": "x", "id": "a/b"},
        {"image": "photos/missing.png", "expression": "x"},
        {"image": "photos/photo00.png", "expression": "x", "mask": "small.png"},
        {"image": "photos/photo00.png", "expression": "x", "mask": "masks/none.png"},
        {"image": "photos/photo00.png", "video": "clips/x", "expression": "x"},
        {"image": "photos/photo00.png", "expression": "x", "mask": {"size": [96, 128], "counts": "!!bad"}},
        {"image": "photos/photo00.png", "expression": "the good one", "mask": "masks/photo00_0.png"},
    ])
    errors = []
    [record] = read_own_data(tmp_path, "mixed", on_bad=errors.append)
    assert [r.expressions for r in record.referents] == [["the good one"]]
    reasons = [(e.sample_id, e.reason) for e in errors]
    assert reasons == [
        ("line 1", "path outside the dataset root"), ("line 2", "malformed entry"), ("line 3", "empty expression"),
        ("line 4", "malformed entry"), ("line 5", "missing image file"), ("line 6", "mask size disagrees with frame"),
        ("line 7", "missing annotation file"), ("line 8", "malformed entry"), ("line 9", "malformed mask RLE"),
    ]
    assert "leaves the dataset folder" in errors[0].detail and errors[4].path.endswith("missing.png")


def test_paths_outside_the_folder_only_with_the_option(tmp_path):
    outside = tmp_path / "elsewhere"
    write_own_data_example(outside, num_images=1, num_videos=0)
    root = tmp_path / "data"
    root.mkdir()
    _write_lines(root, "train", [{"image": "../elsewhere/photos/photo00.png", "expression": "x"}])
    assert read_own_data(root, "train") == []
    [record] = read_own_data(root, "train", allow_outside_root=True)
    assert Path(record.frames[0]).resolve() == (outside / "photos" / "photo00.png").resolve()


def test_a_file_that_is_not_json_lines_fails_at_once(tmp_path):
    with pytest.raises(DatasetFormatError, match="train.jsonl: file not found"):
        read_own_data(tmp_path, "train")
    (tmp_path / "train.jsonl").write_text('[{"image": "a.jpg", "expression": "x"}]\n')
    with pytest.raises(DatasetFormatError, match="no line is a JSON object"):
        read_own_data(tmp_path, "train")
    (tmp_path / "train.jsonl").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetFormatError, match="not UTF-8"):
        read_own_data(tmp_path, "train")
