"""Conformance with the official tools on this project's own output: the synthetic data as the
reference loaders open it, and the edge cases where the reference evaluators decide a score.

The reference behaviour is re-stated here from the public code it comes from (the ``refer`` API's
``getMask``, LISA's ``intersectionAndUnionGPU``, ReferFormer's Ref-YouTube-VOS loader and
``inference_ytvos.py``, MeViS's ``eval_mevis.py``), each at the test that relies on it."""

from __future__ import annotations

import json
import logging
import pickle
import shutil

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from pipelines.config import EvalConfig
from pipelines.evaluate import score_predictions
from pipelines.infer import infer, parse_dataset
from salma.data.masks import decode_rle, encode_mask, refer_mask_rle
from salma.data.ref_vos import read_ref_youtube_vos
from salma.data.refcoco import read_refcoco
from salma.metrics import ciou_giou, video_jf

# ReferFormer's datasets/ytvos.py (and its derivatives): the 65 YouTube-VOS category names.
YTVOS_CATEGORIES = set(
    "airplane ape bear bike bird boat bucket bus camel cat cow crocodile deer dog dolphin duck eagle earless_seal "
    "elephant fish fox frisbee frog giant_panda giraffe hand hat hedgehog horse knife leopard lion lizard monkey "
    "motorbike mouse others owl paddle parachute parrot penguin person plant rabbit raccoon sedan shark sheep sign "
    "skateboard snail snake snowboard squirrel surfboard tennis_racket tiger toilet train truck turtle umbrella "
    "whale zebra".split()
)


def refer_get_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    """The refer API's ``getMask`` / LISA's loader: ``segmentation[0]`` decides polygon vs RLE,
    the decoded parts are summed into a uint8 mask."""
    if type(annotation["segmentation"][0]) == list:  # noqa: E721 - the reference's own check
        rle = coco_mask.frPyObjects(annotation["segmentation"], height, width)
    else:
        rle = annotation["segmentation"]
    m = coco_mask.decode(rle)
    return np.sum(m, axis=2).astype(np.uint8)


def lisa_intersection_union(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """LISA's ``intersectionAndUnionGPU(pred, target, K=2, ignore_index=255)``, foreground class."""
    output = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32)).reshape(-1)
    target = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)).reshape(-1)
    output[target == 255] = 255
    intersection = output[output == target]
    area_i = torch.histc(intersection, bins=2, min=0, max=1)
    area_o = torch.histc(output, bins=2, min=0, max=1)
    area_t = torch.histc(target, bins=2, min=0, max=1)
    return float(area_i[1]), float((area_o + area_t - area_i)[1])


def test_synthetic_refcoco_is_what_the_refer_api_reads(synthetic_data):
    root = synthetic_data / "refer" / "refcoco"
    instances = json.loads((root / "instances.json").read_text())
    images = {i["id"]: i for i in instances["images"]}
    annotations = {a["id"]: a for a in instances["annotations"]}
    refs = pickle.loads((root / "refs(unc).p").read_bytes())
    assert all(isinstance(a["segmentation"][0], list) for a in annotations.values())  # polygons, like the release
    assert all(isinstance(r["ref_id"], int) for r in refs)
    for record in read_refcoco(root, "val"):
        for referent in record.referents:
            annotation = annotations[referent.object_ids[0]]
            image = images[annotation["image_id"]]
            reference = refer_get_mask(annotation, image["height"], image["width"])
            np.testing.assert_array_equal(decode_rle(referent.masks[0]), reference == 1)


def test_overlapping_polygon_parts_score_as_lisa_scores_the_summed_mask():
    """Where two parts of one object overlap, the summed mask holds 2: LISA's histc over [0, 1]
    counts it neither as foreground target nor in the intersection, i.e. as background. Our
    mask leaves those pixels out, and cIoU/gIoU then equal LISA's for any prediction."""
    height, width = 20, 24
    parts = [[2.0, 2.0, 14.0, 2.0, 14.0, 12.0, 2.0, 12.0], [8.0, 6.0, 20.0, 6.0, 20.0, 16.0, 8.0, 16.0]]
    annotation = {"segmentation": parts}
    summed = refer_get_mask(annotation, height, width)
    assert summed.max() == 2  # the parts do overlap
    ours = decode_rle(refer_mask_rle(parts, height, width))
    np.testing.assert_array_equal(ours, summed == 1)
    rng = np.random.default_rng(0)
    predictions = [summed > 0, summed == 2, summed == 1, rng.random((height, width)) > 0.5, np.zeros_like(ours)]
    for pred in predictions:
        i, u = lisa_intersection_union(pred, summed)
        ciou, giou = ciou_giou([(pred, ours)])
        assert ciou == pytest.approx(i / u if u else 1.0) and giou == pytest.approx(i / (u + 1e-5) if u else 1.0, abs=1e-5)
    # One part, or an RLE, is unchanged.
    single = decode_rle(refer_mask_rle(parts[:1], height, width))
    np.testing.assert_array_equal(single, refer_get_mask({"segmentation": parts[:1]}, height, width) == 1)


def _ref_vos_copy(synthetic_data, tmp_path):
    root = tmp_path / "ref_youtube_vos"
    shutil.copytree(synthetic_data / "ref_youtube_vos", root)
    return root


def test_synthetic_ref_youtube_vos_opens_as_the_reference_scripts_open_it(synthetic_data):
    root = synthetic_data / "ref_youtube_vos"
    # ReferFormer's inference_ytvos.py: valid videos = valid expressions minus the test file's.
    valid = json.loads((root / "meta_expressions" / "valid" / "meta_expressions.json").read_text())["videos"]
    test = json.loads((root / "meta_expressions" / "test" / "meta_expressions.json").read_text())["videos"]
    assert set(valid) - set(test) == set(valid)
    for split in ("train", "valid"):
        meta = json.loads((root / split / "meta.json").read_text())["videos"]
        categories = {o["category"] for v in meta.values() for o in v["objects"].values()}
        assert categories and categories <= YTVOS_CATEGORIES


def test_an_object_on_no_annotation_png_is_scored_against_empty_ground_truth(synthetic_data, tmp_path):
    """ReferFormer builds ``(mask == obj_id)`` per frame: an object on no PNG has an all-empty
    mask, and its expression is scored (DAVIS J: 1 for an empty prediction, 0 otherwise)."""
    root = _ref_vos_copy(synthetic_data, tmp_path)
    path = root / "meta_expressions" / "valid" / "meta_expressions.json"
    document = json.loads(path.read_text())
    video_id = sorted(document["videos"])[0]
    document["videos"][video_id]["expressions"]["99"] = {"exp": "the invisible ghost", "obj_id": "42"}
    path.write_text(json.dumps(document))
    records = {r.sample_id: r for r in read_ref_youtube_vos(root, "valid", on_bad=lambda e: pytest.fail(str(e)))}
    ghost = next(r for r in records[video_id].referents if r.ref_id == "99")
    assert ghost.masks == [None] * records[video_id].num_frames

    record = records[video_id]
    empty = [None] * record.num_frames
    full = [encode_mask(np.ones((record.height, record.width), dtype=bool))] * record.num_frames
    for prediction, expected_j in ((empty, 1.0), (full, 0.0)):
        results = {video_id: {"99": {"prediction_masks": prediction}}}
        folder = tmp_path / f"pred-{expected_j}"
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(results))
        scores = score_predictions(folder, parse_dataset(f"ref_youtube_vos:{root}", split="valid"), workers=1)
        row = next(r for r in scores.per_expression if r["sample_id"] == video_id and r["ref_id"] == "99")
        assert row["J"] == expected_j


def test_a_video_missing_from_the_predictions_scores_zero_and_is_named(synthetic_data, tmp_path, caplog):
    """MeViS's eval_mevis.py: ``if not os.path.exists(f'{pred_path}/{video}'): out_dict[exp] = [0, 0]``;
    a missing expression of a predicted video stays an empty mask."""
    source = parse_dataset(f"mevis:{synthetic_data / 'mevis'}", split="valid_u")
    from salma.data.sources import read_source

    records = read_source("mevis", source.root, "valid_u")
    assert len(records) >= 2
    kept, dropped = records[0], records[1:]
    results = {kept.sample_id: {}}
    for referent in kept.referents[1:]:
        results[kept.sample_id][referent.ref_id] = {"prediction_masks": referent.masks}
    (tmp_path / "results.json").write_text(json.dumps(results))
    with caplog.at_level(logging.WARNING, logger="pipelines.evaluate"):
        scores = score_predictions(tmp_path, source, workers=1)
    warning = next(r.getMessage() for r in caplog.records if "score 0" in r.getMessage())
    assert all(r.sample_id in warning for r in dropped)
    rows = scores.per_expression
    for row in rows:
        if row["sample_id"] != kept.sample_id:
            assert row["J"] == 0.0 and row["F"] == 0.0
    first = kept.referents[0]
    gt = np.zeros((kept.num_frames, kept.height, kept.width), dtype=bool)
    for t, rle in enumerate(first.masks):
        if rle is not None:
            gt[t] = decode_rle(rle)
    expected = video_jf(np.zeros_like(gt), gt)  # missing expression in a predicted video: empty mask
    row = next(r for r in rows if r["sample_id"] == kept.sample_id and r["ref_id"] == first.ref_id)
    assert row["J"] == pytest.approx(expected["J"]) and row["F"] == pytest.approx(expected["F"])
    assert scores.counts["missing_videos"] == len(dropped)


def test_results_json_keeps_the_integer_ref_ids_of_the_refs_pickle(synthetic_data, tmp_path):
    root = synthetic_data / "refer" / "refcoco"
    summary = infer("tiny", parse_dataset(f"refcoco:{root}", split="val"), tmp_path,
                    settings=EvalConfig(num_actors=0, generate=False, max_samples=2, visual_samples=0))  # fmt: skip
    results = json.loads(open(summary.results_path).read())
    refs = {r["ref_id"] for r in pickle.loads((root / "refs(unc).p").read_bytes())}
    assert results and all(isinstance(e["ref_id"], int) and e["ref_id"] in refs for e in results)
    scores = score_predictions(tmp_path, parse_dataset(f"refcoco:{root}", split="val"), max_samples=2)
    assert scores.counts["missing_predictions"] == 0
