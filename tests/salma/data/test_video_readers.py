import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SEED
from data_fixture_writers import write_mevis_split, write_ref_davis_pkl, write_revos
from salma.data.decode import decode_masks, load_frames
from salma.data.errors import raise_bad_record
from salma.data.masks import decode_rle
from salma.data.mevis import read_mevis
from salma.data.ref_vos import read_ref_davis17, read_ref_youtube_vos
from salma.data.revos import read_revos
from salma.data.synthetic import synthetic_video_scene


def _all_masks(referent, record):
    return decode_masks(referent, range(record.num_frames), record.height, record.width)


def test_mevis_fixture_merges_anno_ids_and_keeps_absent_frames(tmp_path):
    expected = write_mevis_split(tmp_path / "train")
    (record,) = read_mevis(tmp_path, "train", on_bad=raise_bad_record)
    assert record.media == "video" and record.num_frames == 3
    assert (record.height, record.width) == (expected["height"], expected["width"])
    assert record.meta["has_ground_truth"] is True
    one, both = record.referents
    assert one.ref_id == "0" and one.object_ids == [0] and one.expressions == ["the box growing to the right"]
    assert both.object_ids == [0, 1] and both.meta["anno_ids"] == [0, 1]
    np.testing.assert_array_equal(_all_masks(one, record), np.stack(expected["a0"]))
    merged = [a if b is None else a | b for a, b in zip(expected["a0"], expected["a1"])]
    np.testing.assert_array_equal(_all_masks(both, record), np.stack(merged))


def test_mevis_split_without_mask_dict_has_no_ground_truth(tmp_path):
    write_mevis_split(tmp_path / "valid")
    (tmp_path / "valid" / "mask_dict.json").unlink()
    (record,) = read_mevis(tmp_path, "valid")
    assert record.meta["has_ground_truth"] is False
    assert all(m is None for ref in record.referents for m in ref.masks)


def test_synthetic_mevis_round_trips_bit_exact(manifest):
    info = manifest["datasets"]["mevis"]
    for split in ("train", "valid_u"):
        records = read_mevis(info["root"], split, on_bad=raise_bad_record)
        assert len(records) == info["counts"][split]
        for index, record in enumerate(records):
            scene, _, _ = synthetic_video_scene("mevis", SEED, split, index)
            assert record.num_frames == scene.num_frames
            frames = load_frames(record, range(record.num_frames))
            assert all(f.shape == (scene.height, scene.width, 3) for f in frames)
            for ref in record.referents:
                decoded = _all_masks(ref, record)
                for t in range(scene.num_frames):
                    _, masks = scene.render(t)
                    expected = np.zeros_like(decoded[t])
                    for object_id in ref.object_ids:
                        expected |= masks[object_id]
                    np.testing.assert_array_equal(decoded[t], expected)


def test_synthetic_mevis_drift_distractors(manifest):
    root = Path(manifest["datasets"]["mevis"]["root"])
    sidecar = json.loads((root / "drift" / "distractors.json").read_text())
    records = read_mevis(root, "drift")
    keyed = {f"{r.sample_id}/{ref.ref_id}": (r, ref) for r in records for ref in r.referents}
    assert sidecar and set(sidecar) <= set(keyed)
    for key, anno_ids in sidecar.items():
        record, ref = keyed[key]
        assert ref.meta["distractor_ids"] == anno_ids
        target = _all_masks(ref, record)
        distractor = np.stack([decode_rle(m) for m in ref.meta["distractor_masks"]])
        assert distractor.sum() > 1.5 * target.sum() and not (distractor & target).any()


def test_revos_type_id_size_and_foreground(tmp_path):
    expected = write_revos(tmp_path)
    (record,) = read_revos(tmp_path, "valid", on_bad=raise_bad_record)
    assert (record.height, record.width) == (expected["height"], expected["width"])
    referring, reasoning, no_target = record.referents
    assert [r.meta["type_id"] for r in record.referents] == [0, 1, 2]
    np.testing.assert_array_equal(_all_masks(referring, record), np.stack(expected["m5"]))
    np.testing.assert_array_equal(_all_masks(reasoning, record), np.stack(expected["m6"]))
    assert no_target.masks == [None, None] and not _all_masks(no_target, record).any()
    foreground = np.stack([decode_rle(m) for m in record.meta["foreground_masks"]])
    np.testing.assert_array_equal(foreground, np.stack(expected["m5"]) | np.stack(expected["m6"]))


def test_synthetic_ref_youtube_vos_png_masks_bit_exact(manifest):
    info = manifest["datasets"]["ref_youtube_vos"]
    for split in info["splits"]:
        records = read_ref_youtube_vos(info["root"], split, on_bad=raise_bad_record)
        assert len(records) == info["counts"][split]
        for index, record in enumerate(sorted(records, key=lambda r: r.sample_id)):
            scene, _, _ = synthetic_video_scene("ref_youtube_vos", SEED, split, index)
            assert record.frames[1].endswith("/00005.jpg")
            for ref in record.referents:
                (object_id,) = ref.object_ids
                decoded = _all_masks(ref, record)
                for t in range(scene.num_frames):
                    np.testing.assert_array_equal(decoded[t], scene.render(t)[1][object_id - 1])


def test_ref_davis17_pickled_mask_dict_uses_the_sorted_counter(tmp_path):
    expected = write_ref_davis_pkl(tmp_path, "valid")
    records = read_ref_davis17(tmp_path, "valid", on_bad=raise_bad_record)
    assert [r.sample_id for r in records] == ["zebra", "bear"]  # JSON order kept
    for record in records:
        assert record.source == "ref_davis17"
        for ref in record.referents:
            want = expected["expected"][f"{record.sample_id}/{ref.ref_id}"]
            got = _all_masks(ref, record)
            for t, mask in enumerate(want):
                if mask is None:
                    assert ref.masks[t] is None and not got[t].any()
                else:
                    np.testing.assert_array_equal(got[t], mask)
    assert records[1].referents[0].object_ids == [1]


@pytest.mark.parametrize("masks", ["png", "none"])
def test_ref_vos_mask_source_option(manifest, masks):
    root = manifest["datasets"]["ref_youtube_vos"]["root"]
    records = read_ref_youtube_vos(root, "valid", masks=masks)
    has_masks = any(m is not None for r in records for ref in r.referents for m in ref.masks)
    assert has_masks == (masks == "png")
    assert all(r.meta["has_ground_truth"] == (masks == "png") for r in records)
