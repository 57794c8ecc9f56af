"""The bad-input corpus: each broken input is reported with its file and reason, or converted."""

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from data_fixture_writers import write_bad_input_corpus
from salma.data.decode import decode_masks, load_frames, probe_video, read_image_rgb
from salma.data.errors import BadRecordError, DatasetFormatError
from salma.data.mevis import read_mevis
from salma.data.record import Referent, SampleRecord


@pytest.fixture
def corpus(tmp_path):
    return write_bad_input_corpus(tmp_path)


def _rel(path: str, root: Path) -> str:
    return str(Path(path).relative_to(root))


def test_reader_reports_each_bad_video_with_file_and_reason(corpus):
    errors: list[BadRecordError] = []
    records = read_mevis(corpus.mevis_root, "train", on_bad=errors.append)
    assert sorted(r.sample_id for r in records) == ["good", "truncated"]
    got = sorted((e.sample_id, e.reason, _rel(e.path, corpus.mevis_root)) for e in errors)
    assert got == sorted([
        ("missing_frame", "frame list disagrees with folder", "train/JPEGImages/missing_frame"),
        ("folder_mismatch", "frame list disagrees with folder", "train/JPEGImages/folder_mismatch"),
        ("rle_size/0", "mask size disagrees with frame", "train/mask_dict.json"),
        ("rle_size", "no usable referents", "train/meta_expressions.json"),
        ("anno_missing/0", "anno_id missing from mask_dict", "train/mask_dict.json"),
        ("anno_missing", "no usable referents", "train/meta_expressions.json"),
        ("empty_expr/0", "empty expression", "train/meta_expressions.json"),
        ("empty_expr/1", "empty expression", "train/meta_expressions.json"),
        ("empty_expr", "no usable referents", "train/meta_expressions.json"),
        ("zero_frames", "video has no frames", "train/meta_expressions.json"),
    ])
    details = {e.sample_id: e.detail for e in errors}
    assert "2 of 3 listed frames" in details["folder_mismatch"] and "999" in details["anno_missing/0"]


def test_default_on_bad_logs_one_warning_with_counts(corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="salma.data.errors"):
        records = read_mevis(corpus.mevis_root, "train")
    assert len(records) == 2
    (message,) = [r.getMessage() for r in caplog.records]
    assert "skipped 10 bad record(s)" in message and "2 x empty expression" in message


def test_truncated_jpeg_is_reported_at_decode(corpus):
    (record,) = [r for r in read_mevis(corpus.mevis_root, "train") if r.sample_id == "truncated"]
    assert load_frames(record, [0])[0].shape == (12, 16, 3)
    with pytest.raises(BadRecordError) as info:
        load_frames(record, [1])
    assert info.value.reason == "truncated or unreadable image" and info.value.path == str(corpus.truncated_jpeg)


def test_missing_frame_is_reported_at_decode_without_the_index_check(corpus):
    records = {r.sample_id: r for r in read_mevis(corpus.mevis_root, "train", check_files=False)}
    for video, position, name in (("missing_frame", 1, "00001.jpg"), ("folder_mismatch", 2, "00002.jpg")):
        with pytest.raises(BadRecordError) as info:
            load_frames(records[video], [position])
        assert info.value.reason == "missing frame file" and info.value.path.endswith(f"{video}/{name}")


def test_mask_size_and_malformed_rle_are_reported_at_decode(corpus):
    ok = {"size": [12, 16], "counts": "0`3"}  # not a valid run string for 12x16
    masks = [{"size": [5, 5], "counts": "05"}, ok]
    referent = Referent("r", [0], ["x"], masks, meta={"mask_file": "/data/mask_dict.json"})
    with pytest.raises(BadRecordError) as info:
        decode_masks(referent, [0], 12, 16)
    assert (info.value.reason, info.value.path) == ("mask size disagrees with frame", "/data/mask_dict.json")
    with pytest.raises(BadRecordError) as info:
        decode_masks(referent, [1], 12, 16)
    assert info.value.reason == "malformed mask RLE"


def test_frame_size_disagreeing_with_the_record_is_reported(corpus):
    (record,) = [r for r in read_mevis(corpus.mevis_root, "train") if r.sample_id == "good"]
    record.height = 99
    with pytest.raises(BadRecordError, match="frame size disagrees with record"):
        load_frames(record, [0])


def test_malformed_top_level_json_fails_fast_naming_the_file(corpus):
    with pytest.raises(DatasetFormatError) as info:
        read_mevis(corpus.mevis_root, "broken")
    assert info.value.path.endswith("broken/meta_expressions.json")
    assert "not valid JSON" in str(info.value) and "meta_expressions.json" in str(info.value)


def test_video_with_zero_frames(corpus):
    video = str(corpus.zero_frame_mp4)
    record = SampleRecord("x", "train", "empty", "video", 12, 16, video_path=video, frame_indices=[0])
    with pytest.raises(BadRecordError) as info:
        load_frames(record, [0])
    assert info.value.reason in ("unreadable video", "video has no frames")
    assert info.value.path == str(corpus.zero_frame_mp4)
    with pytest.raises(BadRecordError):
        probe_video(corpus.zero_frame_mp4)


def test_unusual_image_modes_are_converted_to_8bit_rgb(corpus):
    images = {name: read_image_rgb(path) for name, path in corpus.odd_images.items()}
    for name, image in images.items():
        assert image.shape == (8, 16, 3) and image.dtype == np.uint8, name
    ramp = np.arange(16, dtype=np.uint8) * 16
    np.testing.assert_array_equal(images["gray"][0, :, 1], ramp)
    np.testing.assert_array_equal(images["gray16"], images["gray"])  # 16-bit scaled, not clipped
    assert images["rgba"][0, 0].tolist() == [200, 0, 0]  # alpha dropped
    assert images["palette"][0, 1].tolist() == [10, 0, 254]
    assert abs(int(images["cmyk"][0, 0, 0]) - 200) <= 2
    record = SampleRecord("x", "train", "g", "image", 8, 16, frames=[str(corpus.odd_images["gray16"])])
    assert load_frames(record, [0])[0].shape == (8, 16, 3)


def test_bad_record_error_survives_pickling_and_rejects_unknown_reasons():
    error = BadRecordError("/a/b.jpg", "missing frame file", sample_id="v/1", detail="gone")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.reason, copy.sample_id, copy.detail, str(copy)) == (
        error.path, error.reason, error.sample_id, error.detail, str(error))
    with pytest.raises(ValueError, match="BAD_REASONS"):
        BadRecordError("/a", "something new")
    assert pickle.loads(pickle.dumps(DatasetFormatError("/x.json", "bad"))).path == "/x.json"
