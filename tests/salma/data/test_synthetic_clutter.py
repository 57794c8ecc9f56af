"""Clutter-lure splits: lure vs control colours, object size, clutter never an annotation, the
sidecar through the readers, and the default output unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from salma.data.clutter import CLUTTER_FILE
from salma.data.errors import DatasetFormatError
from salma.data.masks import decode_rle
from salma.data.mevis import read_mevis
from salma.data.refcoco import read_refcoco
from salma.data.synthetic import ClutterCounts, synthetic_clutter_scene, write_synthetic
from salma.data.synthetic_clutter import FEATURE_CELLS, MIN_OBJECT_CELLS
from salma.data.synthetic_scenes import COLORS, VIVID
from salma.image_transforms import resize_masks
from salma.sam_pretraining import instance_set


@pytest.fixture(scope="module")
def clutter_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("clutter")
    manifest = write_synthetic(out, seed=3, num_images=2, num_videos=2, clutter=ClutterCounts(
        train_images=12, eval_images=10, train_videos=4, eval_videos=3))
    return out, manifest


@pytest.mark.parametrize("split", ["lure", "control", "clutter_train"])
def test_clutter_colour_matches_the_expression_only_in_lure_scenes(split):
    lures = []
    for index in range(12):
        scene, _ = synthetic_clutter_scene("refcoco", 0, split, index)
        target = scene.scene.objects[scene.target_id]
        assert all(target.color in text.split() for text in scene.expressions)  # names the colour
        colours = {c.color for c in scene.clutter}
        assert colours == {target.color} if scene.lure else target.color not in colours
        lures.append(scene.lure)
        frame, masks, region = scene.render(0)
        assert region.mean() >= 0.06 and not any((region & m).any() for m in masks.values())
        # The lure is painted in the vivid version of its colour, on the region only.
        painted = np.all(frame == np.asarray(VIVID[next(iter(colours))], np.uint8), axis=-1)
        assert painted.any() and not (painted & ~region).any()
    expected = {"lure": {True}, "control": {False}, "clutter_train": {True, False}}[split]
    assert set(lures) == expected


def test_objects_span_at_least_two_and_a_half_cells():
    for dataset, split in (("refcoco", "lure"), ("mevis", "control")):
        for index in range(6):
            scene, _ = synthetic_clutter_scene(dataset, 1, split, index)
            h, w = scene.scene.height, scene.scene.width
            for t in (0, scene.scene.num_frames - 1):
                _, masks, _ = scene.render(t)
                for mask in masks.values():
                    ys, xs = np.nonzero(mask)
                    assert (np.ptp(xs) + 1) / (w / FEATURE_CELLS) >= MIN_OBJECT_CELLS
                    assert (np.ptp(ys) + 1) / (h / FEATURE_CELLS) >= MIN_OBJECT_CELLS


def test_readers_carry_the_sidecar_and_clutter_is_never_an_object(clutter_dir):
    out, manifest = clutter_dir
    assert manifest["datasets"]["refcoco"]["counts"]["lure"] == 10
    assert manifest["datasets"]["mevis"]["counts"]["clutter_train"] == 4
    assert manifest["clutter"] == {"train_images": 12, "eval_images": 10, "train_videos": 4, "eval_videos": 3}
    images = read_refcoco(out / "refer" / "refcoco", "lure")
    videos = read_mevis(out / "mevis", "control")
    assert len(images) == 10 and len(videos) == 3
    for record in images + videos:
        for referent in record.referents:
            assert referent.meta["clutter_lure"] is (record.split == "lure")
            assert len(referent.meta["clutter_masks"]) == record.num_frames
            clutter = decode_rle(referent.meta["clutter_masks"][0])
            assert clutter.any() and not (clutter & decode_rle(referent.masks[0])).any()
            objects = decode_rle(referent.meta["object_masks"][0])
            assert (objects >= decode_rle(referent.masks[0])).all() and not (objects & clutter).any()
    assert all("clutter_masks" not in r.meta for rec in read_refcoco(out / "refer" / "refcoco", "val") for r in rec.referents)
    # SAM-2 pre-training's positives are the annotated objects only: no clutter pixel among them.
    data = instance_set(images[:4], image_size=64)
    assert len(data.masks) == 4  # one positive per image: its annotated target
    for image_index, mask in zip(data.image_index, data.masks):
        clutter = decode_rle(images[image_index].referents[0].meta["clutter_masks"][0])
        clutter_small = resize_masks(clutter[None], 64)[0]
        assert (mask & clutter_small).sum() <= 0.02 * mask.sum()  # only resampling at the edges


def test_malformed_sidecar_names_the_file(clutter_dir, tmp_path):
    out, _ = clutter_dir
    sidecar = out / "refer" / "refcoco" / CLUTTER_FILE
    original = sidecar.read_text()
    key = read_refcoco(out / "refer" / "refcoco", "lure")[0].referents[0].ref_id
    try:
        sidecar.write_text(json.dumps({"1": {"lure": "yes", "masks": [], "objects": []}}))
        with pytest.raises(DatasetFormatError, match="clutter.json"):
            read_refcoco(out / "refer" / "refcoco", "lure")
        entries = json.loads(original)
        entries[key]["masks"] = entries[key]["masks"] * 2  # two masks for a one-frame image
        entries[key]["objects"] = entries[key]["objects"] * 2
        sidecar.write_text(json.dumps(entries))
        with pytest.raises(DatasetFormatError, match="regenerate"):
            read_refcoco(out / "refer" / "refcoco", "lure")
    finally:
        sidecar.write_text(original)


def test_without_clutter_the_output_has_no_clutter_splits(tmp_path):
    manifest = write_synthetic(tmp_path, seed=3, num_images=2, num_videos=2)
    assert "clutter" not in manifest and "lure" not in manifest["datasets"]["refcoco"]["splits"]
    assert not list(tmp_path.rglob(CLUTTER_FILE))
    assert set(COLORS) == set(VIVID)


def test_batches_carry_the_object_union_clutter_and_lure_flags(clutter_dir):
    import random

    from salma.config import tiny_config
    from salma.data.examples import ImageGeometry, collate
    from salma.data.sampling import SamplingOptions, sample_example
    from salma.tokenizer import build_tiny_tokenizer

    out, _ = clutter_dir
    tokenizer, geometry = build_tiny_tokenizer(), ImageGeometry.from_config(tiny_config())
    options = SamplingOptions(num_frames=3, max_objects=2)
    records = read_refcoco(out / "refer" / "refcoco", "lure")[:2] + read_mevis(out / "mevis", "control")[:1]
    examples = [sample_example(r, rng=random.Random(0), options=options, tokenizer=tokenizer, geometry=geometry)
                for r in records]
    batch = collate(examples, pad_token_id=tokenizer.pad_token_id)
    assert batch.frame_object_masks.shape == batch.frame_clutter_masks.shape == (5, 128, 128)
    assert batch.object_lure.tolist() == [1, 1, 0]
    for p in range(batch.gt_masks.shape[0]):  # every target lies inside the object union
        union = batch.frame_object_masks[batch.pair_frame_index[p]]
        assert (batch.gt_masks[p] & ~union).sum() <= 0.01 * batch.gt_masks[p].sum()
    assert not (batch.frame_object_masks & batch.frame_clutter_masks).any()
    # A batch with one example from data without the sidecar has none of the optional fields.
    plain = read_refcoco(out / "refer" / "refcoco", "val")[:1]
    mixed = examples[:1] + [sample_example(plain[0], rng=random.Random(0), options=options, tokenizer=tokenizer,
                                           geometry=geometry)]
    assert collate(mixed, pad_token_id=tokenizer.pad_token_id).frame_object_masks is None
