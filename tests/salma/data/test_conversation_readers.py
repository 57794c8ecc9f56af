import numpy as np
import pytest

from data_fixture_writers import write_chatunivi, write_gcg, write_llava
from salma.data.chatunivi import read_chatunivi
from salma.data.decode import decode_masks, load_frames
from salma.data.errors import raise_bad_record
from salma.data.gcg import read_gcg
from salma.data.llava import read_llava
from salma.data.record import Turn


def test_llava_fixture_image_text_only_and_bad_entries(tmp_path):
    write_llava(tmp_path)
    errors = []
    records = read_llava(tmp_path, "train", annotation_file="mix.json", on_bad=errors.append)
    image, text = records
    assert image.media == "image" and (image.height, image.width) == (20, 30) and image.referents == []
    assert image.conversation == [Turn("What is shown?", "A box."), Turn("What colour?", "Red.")]
    assert load_frames(image, [0])[0].shape == (20, 30, 3)
    assert text.media == "none" and text.frames == [] and text.conversation == [Turn("Say hi.", "Hi.")]
    reported = sorted((e.reason, e.sample_id) for e in errors)
    assert reported == [("malformed entry", "broken"), ("missing image file", "missing")]


def test_synthetic_llava(manifest):
    info = manifest["datasets"]["llava"]
    for split in info["splits"]:
        records = read_llava(info["root"], split, on_bad=raise_bad_record)
        assert len(records) == info["counts"][split]
        for record in records:
            assert record.conversation and all(t.answer for t in record.conversation)
            assert all("<image>" not in t.question for t in record.conversation)
            if record.media == "image":
                assert load_frames(record, [0])[0].shape == (record.height, record.width, 3)


def test_chatunivi_video_image_and_missing_video(tmp_path):
    write_chatunivi(tmp_path)
    errors = []
    video, image = read_chatunivi(
        tmp_path, "train", video_folder="Activity_Videos", image_folder="images", frame_stride=3, on_bad=errors.append
    )
    assert video.media == "video" and video.video_path.endswith("v_1.mp4")
    assert video.frame_indices == [0, 3, 6, 9] and (video.height, video.width) == (24, 32)
    assert video.conversation == [Turn("What happens?", "It gets brighter.")]
    frames = load_frames(video, [0, 3])
    assert frames[1].mean() > frames[0].mean() + 100  # frame 9 is brighter than frame 0
    assert image.media == "image" and image.frames[0].endswith("images/b.jpg")
    assert [(e.reason, e.sample_id) for e in errors] == [("missing video file", "gone")]


def test_gcg_refcocog_layout(tmp_path):
    write_gcg(tmp_path)
    wrapped, plain = read_gcg(tmp_path, "val", on_bad=raise_bad_record)
    assert wrapped.sample_id == "g1_0" and plain.sample_id == "g1_1"
    assert wrapped.meta["caption"] == "a dog chasing a red ball on the grass."
    assert wrapped.meta["unmatched_phrases"] == 1  # "a cat" is not in the caption
    assert [r.expressions for r in wrapped.referents] == [["a dog"], ["a red ball"]]  # caption order
    (turn,) = wrapped.conversation
    assert turn.answer == "<p> a dog </p> [SEG] chasing <p> a red ball </p> [SEG] on the grass."
    dog = decode_masks(wrapped.referents[0], [0], wrapped.height, wrapped.width)[0]
    assert dog[5, 5] and not dog[15, 20]


def test_gcg_grandf_layout(tmp_path):
    expected = write_gcg(tmp_path)
    (record,) = read_gcg(tmp_path, "train", layout="grandf", on_bad=raise_bad_record)
    assert record.conversation[0].answer == "<p> A man </p> [SEG] holding <p> a kite </p> [SEG] near a tree."
    man, kite = record.referents
    assert man.meta["span"] == [0, 5] and kite.expressions == ["a kite"]
    np.testing.assert_array_equal(decode_masks(man, [0], record.height, record.width)[0], expected["man"])
    np.testing.assert_array_equal(decode_masks(kite, [0], record.height, record.width)[0], expected["kite"])


def test_gcg_rejects_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        read_gcg(tmp_path, "val", layout="flickr")
