"""Small hand-made fixtures in the real on-disk formats, for the reader tests.

The synthetic generator writes RefCOCO, MeViS, Ref-YouTube-VOS (PNG) and LLaVA data; these
writers cover what it does not (ReVOS, Ref-DAVIS17 with ``mask_dict.pkl``, Ref-SAV mp4 + masklets,
Chat-UniVi, GLaMM GCG), the hand-written RefCOCO fixture, and the bad-input corpus.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask


def rle_of(mask: np.ndarray, *, counts_as: type = str) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = rle["counts"].decode() if counts_as is str else rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts}


def box_mask(height: int, width: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def write_jpeg(path: Path, height: int, width: int, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((height, width, 3), value, dtype=np.uint8)
    image[: height // 2, :, 0] = 200
    Image.fromarray(image).save(path, format="JPEG", quality=95)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_mp4(path: Path, num_frames: int, height: int, width: int) -> None:
    """Frame t is a flat gray of level 20 * t, so a decoded frame tells which frame it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 24, (width, height))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for t in range(num_frames):
        writer.write(np.full((height, width, 3), 20 * t, dtype=np.uint8))
    writer.release()


# --------------------------------------------------------------------------- RefCOCO, by hand

REFCOCO_INSTANCES = {
    "images": [
        {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 20, "width": 30},
        {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 16, "width": 24},
        {"id": 3, "file_name": "COCO_train2014_000000000003.jpg", "height": 10, "width": 12},
    ],
    "annotations": [
        # A polygon (a square).
        {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100.0,
         "bbox": [5, 5, 10, 10], "segmentation": [[5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]]},
        # A multi-part polygon: one object in two pieces.
        {"id": 21, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 73.0, "bbox": [1, 1, 19, 13],
         "segmentation": [[1.0, 1.0, 6.0, 1.0, 6.0, 6.0, 1.0, 6.0],
                          [12.0, 8.0, 20.0, 8.0, 20.0, 14.0, 12.0, 14.0]]},
        # A compressed RLE (a 3x4 box at rows 2..4, cols 6..9), filled in by write_refcoco_by_hand.
        {"id": 31, "image_id": 3, "category_id": 2, "iscrowd": 0, "area": 12.0, "bbox": [6, 2, 4, 3],
         "segmentation": None},
    ],
    "categories": [
        {"id": 1, "name": "square", "supercategory": "shape"},
        {"id": 2, "name": "box", "supercategory": "shape"},
    ],
}
REFCOCO_RLE_MASK = box_mask(10, 12, 2, 5, 6, 10)
REFCOCO_REFS = [
    {"ref_id": 101, "ann_id": 11, "image_id": 1, "split": "train", "category_id": 1, "sent_ids": [1, 2],
     "file_name": "COCO_train2014_000000000001_11.jpg",
     "sentences": [{"sent": "the square", "raw": "The square.", "sent_id": 1, "tokens": ["the", "square"]},
                   {"sent": "   ", "raw": "", "sent_id": 2, "tokens": []}]},
    {"ref_id": 102, "ann_id": 21, "image_id": 2, "split": "val", "category_id": 1, "sent_ids": [3],
     "file_name": "COCO_train2014_000000000002_21.jpg",
     "sentences": [{"sent": "the split square", "raw": "the split square", "sent_id": 3,
                    "tokens": ["the", "split", "square"]}]},
    {"ref_id": 103, "ann_id": 31, "image_id": 3, "split": "testA", "category_id": 2, "sent_ids": [4, 5],
     "file_name": "COCO_train2014_000000000003_31.jpg",
     "sentences": [{"sent": "the box", "raw": "the box", "sent_id": 4, "tokens": ["the", "box"]},
                   {"sent": "small box on the right", "raw": "small box on the right", "sent_id": 5, "tokens": []}]},
]


def write_refcoco_by_hand(data_root: Path) -> Path:
    """refer layout under ``data_root``; returns the dataset folder (``data_root/refcoco``)."""
    instances = json.loads(json.dumps(REFCOCO_INSTANCES))
    instances["annotations"][2]["segmentation"] = rle_of(REFCOCO_RLE_MASK)
    dataset_dir = data_root / "refcoco"
    write_json(dataset_dir / "instances.json", instances)
    with (dataset_dir / "refs(unc).p").open("wb") as f:
        pickle.dump(REFCOCO_REFS, f, protocol=2)
    for image in instances["images"]:
        image_dir = data_root / "images" / "mscoco" / "images" / "train2014"
        write_jpeg(image_dir / image["file_name"], image["height"], image["width"])
    return dataset_dir


# --------------------------------------------------------------------------- MeViS / ReVOS


def write_mevis_split(split_dir: Path) -> dict:
    """One 3-frame video: anno 0 on every frame, anno 1 absent (null) on frame 1.

    Expression "0" names anno 0; expression "1" names both (merged per frame).
    """
    h, w = 12, 16
    frames = ["00000", "00001", "00002"]
    for name in frames:
        write_jpeg(split_dir / "JPEGImages" / "vid1" / f"{name}.jpg", h, w)
    a0 = [box_mask(h, w, 0, 4, 0, 4 + t) for t in range(3)]
    a1 = [box_mask(h, w, 8, 12, 10, 16), None, box_mask(h, w, 7, 12, 9, 16)]
    write_json(split_dir / "mask_dict.json", {
        "0": [rle_of(m) for m in a0],
        "1": [None if m is None else rle_of(m) for m in a1],
    })
    write_json(split_dir / "meta_expressions.json", {"videos": {"vid1": {
        "frames": frames,
        "expressions": {
            "0": {"exp": "the box growing to the right", "obj_id": [0], "anno_id": [0]},
            "1": {"exp": "both boxes", "obj_id": [0, 1], "anno_id": [0, 1]},
        },
    }}})
    return {"a0": a0, "a1": a1, "height": h, "width": w}


def write_revos(root: Path) -> dict:
    h, w = 10, 14
    frames = ["00000", "00001"]
    for name in frames:
        write_jpeg(root / "JPEGImages" / "rv1" / f"{name}.jpg", h, w)
    m5 = [box_mask(h, w, 1, 5, 1, 5), box_mask(h, w, 2, 6, 2, 6)]
    m6 = [box_mask(h, w, 6, 9, 8, 13), box_mask(h, w, 6, 9, 9, 14)]
    write_json(root / "mask_dict.json", {"5": [rle_of(m) for m in m5], "6": [rle_of(m) for m in m6]})
    foreground = [rle_of(a | b) for a, b in zip(m5, m6)]
    write_json(root / "mask_dict_foreground.json", {"rv1": {"masks_rle": foreground, "foreground_ratio": [0.1, 0.1]}})
    write_json(root / "meta_expressions_valid_.json", {"videos": {"rv1": {
        "vid_id": 0, "height": h, "width": w, "frames": frames,
        "expressions": {
            "0": {"exp": "the upper box", "obj_id": [0], "anno_id": [5], "type_id": 0},
            "1": {"exp": "which object could hold a cup?", "obj_id": [1], "anno_id": [6], "type_id": 1},
            "2": {"exp": "the elephant", "obj_id": [], "anno_id": [], "type_id": 2},
        },
    }}})
    return {"m5": m5, "m6": m6, "height": h, "width": w}


# --------------------------------------------------------------------------- Ref-DAVIS17 with mask_dict.pkl


def write_ref_davis_pkl(root: Path, split: str = "valid") -> dict:
    """Two videos listed out of order, exp ids "0", "1", "10" to pin the anno-id counter order."""
    h, w = 8, 10
    frames = ["00000", "00001"]
    videos = {
        "zebra": {"frames": frames, "expressions": {
            "0": {"exp": "the left animal", "obj_id": "1"},
            "1": {"exp": "the right animal", "obj_id": "2"},
        }},
        "bear": {"frames": frames, "expressions": {
            "0": {"exp": "a bear", "obj_id": "1"},
            "10": {"exp": "a bear again", "obj_id": "1"},
            "1": {"exp": "the cub", "obj_id": "2"},
        }},
    }
    write_json(root / "meta_expressions" / split / "meta_expressions.json", {"videos": videos})
    for vid in videos:
        for name in frames:
            write_jpeg(root / split / "JPEGImages" / vid / f"{name}.jpg", h, w)
    # Counter over sorted videos, then sorted exp ids: bear/0 -> 0, bear/1 -> 1, bear/10 -> 2,
    # zebra/0 -> 3, zebra/1 -> 4. Mask of anno k: a box k+1 pixels wide; frame 1 of anno 1 is None.
    expected = {}
    mask_dict = {}
    for anno, key in enumerate(["bear/0", "bear/1", "bear/10", "zebra/0", "zebra/1"]):
        masks = [box_mask(h, w, 0, 3, 0, anno + 1), box_mask(h, w, 4, 8, 0, anno + 1)]
        if anno == 1:
            masks[1] = None
        expected[key] = masks
        mask_dict[str(anno)] = [None if m is None else rle_of(m, counts_as=bytes) for m in masks]
    with (root / split / "mask_dict.pkl").open("wb") as f:
        pickle.dump(mask_dict, f)
    return {"expected": expected, "height": h, "width": w}


# --------------------------------------------------------------------------- Ref-SAV


def write_ref_sav(root: Path) -> dict:
    """A 12-frame mp4, masklets on frames 0, 4, 8; two objects; Sa2VA-style paths."""
    h, w, n = 32, 48, 12
    write_mp4(root / "sav_000" / "sav_000001.mp4", n, h, w)
    obj0 = [box_mask(h, w, 0, 8, 4 * i, 4 * i + 8) for i in range(3)]
    obj1 = [box_mask(h, w, 20, 30, 30, 40) for _ in range(3)]
    masklet = [[rle_of(a), rle_of(b)] for a, b in zip(obj0, obj1)]
    write_json(root / "sav_000" / "sav_000001_manual.json", {
        "video_id": "sav_000001", "video_duration": 0.5, "video_frame_count": float(n),
        "video_height": float(h), "video_width": float(w), "video_resolution": float(h * w),
        "video_environment": "Indoor", "video_split": "train", "masklet": masklet,
        "masklet_id": [0, 1], "masklet_num": 2, "masklet_first_appeared_frame": [0.0, 0.0],
        "masklet_frame_count": [3, 3], "masklet_type": ["manual", "manual"],
    })
    write_json(root / "Ref-SAV.json", {"sav_000001": {
        # Sa2VA's paths start with a folder the reader strips when it does not exist.
        "video_path": "sav_train/sav_000/sav_000001.mp4",
        "anno_path": "sav_train/sav_000/sav_000001_manual.json",
        "objects": {
            "0": {"formated": "A small box sliding to the right along the top.", "short_caps": ["a sliding box"]},
            "1": {"formated": "A box resting in the lower right corner.", "short_caps": []},
        },
    }})
    return {"obj0": obj0, "obj1": obj1, "height": h, "width": w, "num_frames": n}


# --------------------------------------------------------------------------- LLaVA / Chat-UniVi / GCG


def write_llava(root: Path) -> None:
    write_jpeg(root / "coco" / "a.jpg", 20, 30)
    write_json(root / "mix.json", [
        {"id": "img", "image": "coco/a.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A box."},
            {"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "text", "conversations": [
            {"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]},
        {"id": "missing", "image": "coco/none.jpg", "conversations": [
            {"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]},
        {"id": "broken", "conversations": [
            {"from": "human", "value": "Q?"}, {"from": "human", "value": "Q again?"}]},
    ])


def write_chatunivi(root: Path) -> None:
    write_mp4(root / "Activity_Videos" / "v_1.mp4", 10, 24, 32)
    write_jpeg(root / "images" / "b.jpg", 12, 20)
    write_json(root / "train.json", [
        {"id": "v1", "video": "v_1.mp4", "conversations": [
            {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "It gets brighter."}]},
        {"id": "i1", "image": "b.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A picture."}]},
        {"id": "gone", "video": "v_2.mp4", "conversations": [
            {"from": "human", "value": "<video>\nQ?"}, {"from": "gpt", "value": "A."}]},
    ])


def write_gcg(root: Path) -> dict:
    h, w = 20, 30
    write_jpeg(root / "images" / "g1.jpg", h, w)
    dog = [[2.0, 2.0, 10.0, 2.0, 10.0, 10.0, 2.0, 10.0]]
    ball = [[15.0, 12.0, 25.0, 12.0, 25.0, 18.0, 15.0, 18.0]]
    refcocog = [
        {"g1_0": {"img_file_name": "g1.jpg", "caption": '"A Dog chasing a red ball on the grass."',
                  "refs": [{"sentence": "a red ball", "bbox": [15, 12, 10, 6], "segmentation": ball},
                           {"sentence": "a dog", "bbox": [2, 2, 8, 8], "segmentation": dog},
                           {"sentence": "a cat", "bbox": [0, 0, 1, 1], "segmentation": dog}]}},
        {"img_file_name": "g1.jpg", "caption": "a dog.", "id": "g1_1",
         "refs": [{"sentence": "a dog", "bbox": [2, 2, 8, 8], "segmentation": dog}]},
    ]
    write_json(root / "RefCOCOg_GCG_val.json", refcocog)
    caption = "A man holding a kite near a tree."
    man, kite = box_mask(h, w, 0, 10, 0, 8), box_mask(h, w, 2, 6, 20, 28)
    write_json(root / "GranDf_HA_GCG_train.json", [{
        "file_name": "g1.jpg", "height": h, "width": w, "image_id": "g1", "caption": caption,
        "groundings": {
            "a kite": {"token_positives": [14, 20], "rle_masks": [rle_of(kite)]},
            "A man": {"token_positives": [0, 5], "rle_masks": [rle_of(man)]},
        },
    }])
    return {"height": h, "width": w, "man": man, "kite": kite}


# --------------------------------------------------------------------------- the bad-input corpus


@dataclass
class BadCorpus:
    mevis_root: Path  # MeViS layout; split "train" holds one broken video per case, "broken" bad JSON
    odd_images: dict[str, Path]  # converted, not rejected
    zero_frame_mp4: Path
    truncated_jpeg: Path


def write_bad_input_corpus(root: Path) -> BadCorpus:
    """Every kind of bad input the readers and decoders must report (or convert)."""
    h, w = 12, 16
    split_dir = root / "mevis" / "train"
    jpegs = split_dir / "JPEGImages"
    two = ["00000", "00001"]
    videos: dict = {}
    mask_dict: dict = {"0": [rle_of(box_mask(h, w, 0, 5, 0, 5))] * 2}

    def add(video, frames=two, expressions=None, write=two):
        for name in write:
            write_jpeg(jpegs / video / f"{name}.jpg", h, w)
        default = {"0": {"exp": "the box", "obj_id": [0], "anno_id": [0]}}
        videos[video] = {"frames": frames, "expressions": expressions or default}

    add("good")
    add("truncated")
    truncated = jpegs / "truncated" / "00001.jpg"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    add("missing_frame", write=["00000"])
    mask_dict["1"] = [rle_of(box_mask(5, 5, 0, 2, 0, 2))] * 2  # 5x5 masks on 12x16 frames
    add("rle_size", expressions={"0": {"exp": "the box", "obj_id": [0], "anno_id": [1]}})
    add("anno_missing", expressions={"0": {"exp": "the box", "obj_id": [0], "anno_id": [999]}})
    add("empty_expr", expressions={"0": {"exp": "   ", "obj_id": [0], "anno_id": [0]},
                                   "1": {"exp": "", "obj_id": [0], "anno_id": [0]}})
    add("zero_frames", frames=[], write=[])
    mask_dict["2"] = [rle_of(box_mask(h, w, 0, 5, 0, 5))] * 3
    add("folder_mismatch", frames=["00000", "00001", "00002"], write=["00000", "00003"],
        expressions={"0": {"exp": "the box", "obj_id": [0], "anno_id": [2]}})
    write_json(split_dir / "meta_expressions.json", {"videos": videos})
    write_json(split_dir / "mask_dict.json", mask_dict)

    broken = root / "mevis" / "broken" / "meta_expressions.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"videos": {"a": {"frames": ["00000"],, }')

    odd = root / "odd"
    odd.mkdir()
    gray = np.tile(np.arange(16, dtype=np.uint8) * 16, (8, 1))
    Image.fromarray(gray).save(odd / "gray.png")
    rgba = np.zeros((8, 16, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba).save(odd / "rgba.png")
    gray16 = (gray.astype(np.uint16) * 257)
    Image.fromarray(gray16).save(odd / "gray16.png")
    palette = Image.frombytes("P", (16, 8), (gray // 16).tobytes())
    palette.putpalette([v for i in range(256) for v in (i * 10 % 256, 0, 255 - i)])
    palette.save(odd / "palette.png")
    Image.fromarray(rgba[..., :3]).convert("CMYK").save(odd / "cmyk.jpg")

    zero = root / "videos" / "empty.mp4"
    zero.parent.mkdir()
    writer = cv2.VideoWriter(str(zero), cv2.VideoWriter_fourcc(*"mp4v"), 24, (16, 12))
    writer.release()
    if not zero.exists():
        zero.write_bytes(b"")
    return BadCorpus(
        mevis_root=root / "mevis",
        odd_images={p.stem: p for p in sorted(odd.iterdir())},
        zero_frame_mp4=zero,
        truncated_jpeg=truncated,
    )
