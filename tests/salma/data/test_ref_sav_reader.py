import numpy as np
import pytest

from data_fixture_writers import write_ref_sav
from salma.data.decode import decode_masks, load_frames
from salma.data.errors import BadRecordError, raise_bad_record
from salma.data.ref_sav import read_ref_sav


@pytest.fixture
def ref_sav(tmp_path):
    return tmp_path, write_ref_sav(tmp_path)


def test_ref_sav_masklets_and_frame_indices(ref_sav):
    root, expected = ref_sav
    (record,) = read_ref_sav(root, "train", on_bad=raise_bad_record)
    assert record.video_path.endswith("sav_000/sav_000001.mp4") and record.frames == []
    assert record.frame_indices == [0, 4, 8] and record.num_frames == 3
    assert (record.height, record.width) == (expected["height"], expected["width"])
    first, second = record.referents
    assert first.expressions == ["A small box sliding to the right along the top.", "a sliding box"]
    assert first.meta["expression_kinds"] == ["long", "short"]
    got = decode_masks(first, [0, 1, 2], record.height, record.width)
    np.testing.assert_array_equal(got, np.stack(expected["obj0"]))
    np.testing.assert_array_equal(decode_masks(second, [2], record.height, record.width)[0], expected["obj1"][2])


def test_ref_sav_stride_and_opencv_decoding(ref_sav):
    root, expected = ref_sav
    (record,) = read_ref_sav(root, "train", stride=2)
    assert record.frame_indices == [0, 8]
    frames = load_frames(record, [0, 1])
    assert frames[0].shape == (expected["height"], expected["width"], 3) and frames[0].dtype == np.uint8
    # frame t of the fixture is gray level 20 * t (lossy codec: compare loosely)
    assert abs(float(frames[0].mean()) - 0.0) < 6 and abs(float(frames[1].mean()) - 160.0) < 6
    got = decode_masks(record.referents[0], [1], record.height, record.width)[0]
    np.testing.assert_array_equal(got, expected["obj0"][2])


def test_ref_sav_frame_past_the_end_is_reported_at_decode(ref_sav):
    root, _ = ref_sav
    (record,) = read_ref_sav(root, "train")
    record.frame_indices = [0, 40]
    with pytest.raises(BadRecordError) as info:
        load_frames(record, [1])
    assert info.value.reason == "frame index past the end of the video" and info.value.path == record.video_path


def test_ref_sav_missing_video_is_reported(ref_sav):
    root, _ = ref_sav
    (root / "sav_000" / "sav_000001.mp4").unlink()
    errors = []
    assert read_ref_sav(root, "train", on_bad=errors.append) == []
    assert [e.reason for e in errors] == ["missing video file"]
