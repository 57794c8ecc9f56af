import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from data_fixture_writers import REFCOCO_RLE_MASK, write_refcoco_by_hand
from salma.data.decode import decode_masks, load_frames
from salma.data.errors import DatasetFormatError
from salma.data.masks import decode_rle
from salma.data.refcoco import read_refcoco
from salma.data.synthetic import synthetic_image_scene

from conftest import SEED

# COCO.annToMask (the reference decoding) calls pycocotools.mask.decode, which warns under numpy 2.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def by_hand(tmp_path):
    return write_refcoco_by_hand(tmp_path)


def test_hand_written_polygon_and_empty_sentence(by_hand):
    errors = []
    (record,) = read_refcoco(by_hand, "train", on_bad=errors.append)
    assert record.media == "image" and (record.height, record.width) == (20, 30)
    assert record.frames[0].endswith("images/mscoco/images/train2014/COCO_train2014_000000000001.jpg")
    (ref,) = record.referents
    assert ref.ref_id == "101" and ref.object_ids == [11] and ref.expressions == ["the square"]
    mask = decode_masks(ref, [0], 20, 30)[0]
    expected = COCO(str(by_hand / "instances.json")).annToMask(COCO(str(by_hand / "instances.json")).anns[11])
    np.testing.assert_array_equal(mask, expected.astype(bool))
    assert mask[10, 10] and not mask[0, 0]
    # the whitespace sentence is reported and dropped, the ref kept
    assert [(e.reason, e.sample_id) for e in errors] == [("empty expression", "1/101")]
    assert errors[0].path.endswith("refs(unc).p")


def test_hand_written_multi_part_polygon(by_hand):
    (record,) = read_refcoco(by_hand, "val")
    mask = decode_masks(record.referents[0], [0], record.height, record.width)[0]
    coco = COCO(str(by_hand / "instances.json"))
    np.testing.assert_array_equal(mask, coco.annToMask(coco.anns[21]).astype(bool))
    assert mask[3, 3] and mask[10, 15] and not mask[7, 9]  # both parts, nothing between


def test_hand_written_rle_and_test_split_semantics(by_hand):
    for split in ("testA", "test"):
        (record,) = read_refcoco(by_hand, split)
        (ref,) = record.referents
        assert ref.expressions == ["the box", "small box on the right"]
        np.testing.assert_array_equal(decode_masks(ref, [0], 10, 12)[0], REFCOCO_RLE_MASK)
    assert read_refcoco(by_hand, "testB") == []


def test_refcoco_dataset_option_and_missing_files(by_hand, tmp_path):
    with pytest.raises(DatasetFormatError, match=r"refs\(umd\)\.p: file not found"):
        read_refcoco(by_hand, "train", dataset="refcocog")
    records = read_refcoco(by_hand, "val", dataset="refcoco+", split_by="unc")
    assert records[0].source == "refcoco+"
    errors = []
    assert read_refcoco(by_hand, "val", image_folder=tmp_path / "nowhere", on_bad=errors.append) == []
    assert errors[0].reason == "missing image file" and "COCO_train2014_000000000002.jpg" in errors[0].path


def test_synthetic_refcoco_masks_match_the_generator(manifest):
    info = manifest["datasets"]["refcoco"]
    root = info["root"]
    coco = COCO(f"{root}/instances.json")  # pycocotools' own API loads the generated file
    assert len(coco.imgs) == sum(info["counts"].values())
    records = read_refcoco(root, "val")
    assert len(records) == info["counts"]["val"]
    for index, record in enumerate(sorted(records, key=lambda r: r.meta["image_id"])):
        scene, targets, _ = synthetic_image_scene(SEED, "val", index)
        frame, masks = scene.render(0)
        assert (record.height, record.width) == (scene.height, scene.width)
        assert load_frames(record, [0])[0].shape == (scene.height, scene.width, 3)
        ann_ids = sorted(coco.getAnnIds(imgIds=[record.meta["image_id"]]))
        assert {tuple(e) for _, e in targets} == {tuple(r.expressions) for r in record.referents}
        for ref in record.referents:
            obj = ann_ids.index(ref.object_ids[0])
            decoded = decode_masks(ref, [0], record.height, record.width)[0]
            np.testing.assert_array_equal(decoded, masks[obj])  # bit-exact generator -> reader -> decode
            np.testing.assert_array_equal(decoded, coco.annToMask(coco.anns[ref.object_ids[0]]).astype(bool))


def test_synthetic_drift_split_has_distractors(manifest):
    root = manifest["datasets"]["refcoco"]["root"]
    records = read_refcoco(root, "drift")
    sidecar = json.loads((Path(root) / "distractors.json").read_text())
    assert records and all(len(r.referents) == 1 for r in records)
    for record in records:
        ref = record.referents[0]
        assert ref.meta["distractor_ids"] == sidecar[ref.ref_id]
        target = decode_masks(ref, [0], record.height, record.width)[0]
        distractor = decode_rle(ref.meta["distractor_masks"][0])
        assert distractor.sum() > 1.5 * target.sum()  # larger
        assert not (distractor & target).any()
    assert all("distractor_ids" not in ref.meta for r in read_refcoco(root, "val") for ref in r.referents)
