"""Synthetic datasets of coloured shapes, written in the real on-disk formats.

``write_synthetic(out_dir, seed=0, size="small")`` writes, deterministically for a seed::

    <out>/manifest.json
    <out>/refer/refcoco/refs(unc).p          format "refcoco"  splits train, val, drift
    <out>/refer/refcoco/instances.json
    <out>/refer/refcoco/distractors.json     (drift refs -> distractor ann ids)
    <out>/refer/images/mscoco/images/train2014/COCO_train2014_<id>.jpg
    <out>/mevis/<split>/{meta_expressions.json, mask_dict.json, JPEGImages/}
                                             format "mevis"    splits train, valid_u, drift
    <out>/mevis/drift/distractors.json
    <out>/ref_youtube_vos/meta_expressions/<split>/meta_expressions.json   (and test/, with no videos)
    <out>/ref_youtube_vos/<split>/{JPEGImages/, Annotations/ (palette PNG), meta.json}
                                             format "ref_youtube_vos"  splits train, valid
    <out>/llava/<split>.json, llava/images/  format "llava"    splits train, val

With ``clutter=ClutterCounts(...)`` (CLI ``--clutter TRAIN_IMAGES EVAL_IMAGES TRAIN_VIDEOS
EVAL_VIDEOS``) the RefCOCO and MeViS datasets also get the clutter-lure splits ``clutter_train``,
``lure`` and ``control`` (``salma.data.synthetic_clutter``), each with a ``clutter.json`` sidecar
(``salma.data.clutter``); without it nothing else changes.

The readers need no options for these folders: a data config names the ``root`` and ``format``
from the manifest. Scenes, expressions and the uniqueness check live in
``salma.data.synthetic_scenes``. The attention-drift splits put a larger, vivid distractor next to
each target; its id is in the ``distractors.json`` sidecar (see ``salma.data.distractors``).

``size="small"``: 300 / 60 / 60 images, 60 / 15 / 15 MeViS videos, 60 / 15 Ref-YouTube-VOS
videos, 300 / 60 VQA samples; ``"medium"`` is four times that. ``num_images`` / ``num_videos``
override the train counts (evaluation splits get a fifth / a quarter of it), for fast tests.

Command line: ``salma data synth --out DIR [--seed N] [--size small|medium]`` (``pipelines.synth``).
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from salma.config import ClutterCounts
from salma.data.clutter import CLUTTER_FILE
from salma.data.distractors import DISTRACTORS_FILE
from salma.data.masks import encode_mask, rle_area, rle_bbox
from salma.data.synthetic_clutter import ClutterScene, sample_clutter_scene
from salma.data.synthetic_scenes import (
    COLORS,
    SHAPES,
    Scene,
    image_candidates,
    plural_expressions,
    sample_scene,
    scene_facts,
    unique_expressions,
    video_candidates,
)

logger = logging.getLogger(__name__)

GENERATOR = "salma.data.synthetic"
# Bumped whenever the same seed and size would produce different data (2: larger shapes), so that
# data written by an older version is regenerated rather than silently reused.
GENERATOR_VERSION = 2
SyntheticSize = Literal["small", "medium"]
_JPEG_QUALITY = 95
# Sub-stream ids so that each dataset (and each sample) draws from its own random stream.
_STREAM = {"refcoco": 1, "mevis": 2, "ref_youtube_vos": 3, "llava": 4}
_OWNED = ("manifest.json", "refer", "mevis", "ref_youtube_vos", "llava")


@dataclass(frozen=True)
class Counts:
    images: int
    image_eval: int
    videos: int
    video_eval: int

    @classmethod
    def of(cls, size: SyntheticSize, num_images: int | None, num_videos: int | None) -> "Counts":
        if size not in ("small", "medium"):
            raise ValueError(f"size must be 'small' or 'medium', got {size!r}")
        scale = 1 if size == "small" else 4
        images = num_images if num_images is not None else 300 * scale
        videos = num_videos if num_videos is not None else 60 * scale
        if images < 1 or videos < 1:
            raise ValueError("num_images and num_videos must be >= 1")
        return cls(images, max(2, images // 5), videos, max(2, videos // 4))


CLUTTER_SPLITS = ("clutter_train", "lure", "control")


def write_synthetic(
    out_dir: str | Path,
    *,
    seed: int = 0,
    size: SyntheticSize = "small",
    num_images: int | None = None,
    num_videos: int | None = None,
    clutter: ClutterCounts | None = None,
) -> dict[str, Any]:
    """Write every synthetic dataset under ``out_dir``; returns (and writes) the manifest.

    ``out_dir`` must be empty, missing, or an earlier output of this function (whose datasets are
    then replaced). ``clutter`` adds the clutter-lure splits (``clutter_train``, ``lure``,
    ``control``) to the RefCOCO and MeViS datasets; without it the output is byte for byte what
    it was before those splits existed.
    """
    out = Path(out_dir).absolute()
    _prepare(out)
    counts = Counts.of(size, num_images, num_videos)
    clutter = clutter if clutter is not None and clutter.enabled else None
    started = time.perf_counter()
    datasets = {
        "refcoco": _write_refcoco(out / "refer", seed, counts, clutter),
        "mevis": _write_mevis(out / "mevis", seed, counts, clutter),
        "ref_youtube_vos": _write_ref_youtube_vos(out / "ref_youtube_vos", seed, counts),
        "llava": _write_llava(out / "llava", seed, counts),
    }
    manifest = {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": seed, "size": size, "datasets": datasets}
    if clutter is not None:
        manifest["clutter"] = clutter.model_dump()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("wrote synthetic datasets to %s in %.1f s", out, time.perf_counter() - started)
    return manifest


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        manifest = out / "manifest.json"
        try:
            ours = json.loads(manifest.read_text()).get("generator") == GENERATOR
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise FileExistsError(f"{out} is not empty and holds no synthetic manifest; choose an empty folder")
        for name in _OWNED:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _rng(seed: int, dataset: str, split: str, index: int) -> np.random.Generator:
    split_code = sum(ord(c) * 31**i for i, c in enumerate(split)) % 1_000_003
    return np.random.default_rng([seed, _STREAM[dataset], split_code, index])


def _dataset_entry(fmt: str, root: Path, split_counts: dict[str, int]) -> dict[str, Any]:
    """One manifest entry: what a data config needs to read the dataset (no options needed)."""
    return {"format": fmt, "root": str(root), "splits": list(split_counts), "options": {}, "counts": split_counts}


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=_JPEG_QUALITY)


def _scene_with_targets(rng, *, num_frames, drift, noise_seed, video, max_targets):
    """A scene and, per target, (object ids, up to two unique expressions); retries until one has any."""
    for _ in range(50):
        scene = sample_scene(rng, num_frames=num_frames, drift=drift, noise_seed=noise_seed)
        facts = scene_facts(scene)
        candidates_of = video_candidates if video else image_candidates
        if drift:
            order = [scene.objects[0].object_id]
        else:
            order = [int(i) for i in rng.permutation([f.object_id for f in facts])]
        by_id = {f.object_id: f for f in facts}
        targets = []
        for object_id in order:
            texts = unique_expressions(
                candidates_of(by_id[object_id]), frozenset({object_id}), facts, scene.width, scene.height
            )
            if texts:
                how_many = min(len(texts), int(rng.integers(1, 3)))
                picked = [texts[i] for i in rng.choice(len(texts), size=how_many, replace=False)]
                targets.append(([object_id], picked))
            if len(targets) >= max_targets:
                break
        if video and not drift and rng.random() < 0.3:
            plural = plural_expressions(facts, scene.width, scene.height)
            if plural:
                ids, text = plural[int(rng.integers(len(plural)))]
                targets.append((sorted(ids), [text]))
        if targets:
            return scene, targets
    raise RuntimeError("could not generate a scene with a uniquely describable object")


Targets = list[tuple[list[int], list[str]]]


def synthetic_image_scene(seed: int, split: str, index: int) -> tuple[Scene, Targets, np.random.Generator]:
    """The scene, targets (object ids, expressions) and random stream of one RefCOCO sample.

    The writer draws everything else about the sample from the returned generator afterwards, so
    tests can rebuild any sample's scene (and its masks) from ``(seed, split, index)``.
    """
    rng = _rng(seed, "refcoco", split, index)
    scene, targets = _scene_with_targets(
        rng, num_frames=1, drift=split == "drift", noise_seed=int(rng.integers(2**31)), video=False, max_targets=3
    )
    return scene, targets, rng


def synthetic_video_scene(
    dataset: Literal["mevis", "ref_youtube_vos"], seed: int, split: str, index: int
) -> tuple[Scene, Targets, np.random.Generator]:
    """As ``synthetic_image_scene`` for a MeViS or Ref-YouTube-VOS video (6-10 frames)."""
    rng = _rng(seed, dataset, split, index)
    num_frames = int(rng.integers(6, 11))
    noise_seed = int(rng.integers(2**31))
    scene, targets = _scene_with_targets(
        rng, num_frames=num_frames, drift=split == "drift", noise_seed=noise_seed, video=True, max_targets=3
    )
    return scene, targets, rng


def synthetic_clutter_scene(
    dataset: Literal["refcoco", "mevis"], seed: int, split: str, index: int
) -> tuple[ClutterScene, np.random.Generator]:
    """The clutter-lure scene and random stream of one sample of a clutter split.

    ``lure`` scenes in ``lure``, control scenes in ``control``, and in ``clutter_train`` each
    with probability 1/2; images have one frame, MeViS videos 6-10.
    """
    if split not in CLUTTER_SPLITS:
        raise ValueError(f"{split!r} is not a clutter split ({', '.join(CLUTTER_SPLITS)})")
    rng = _rng(seed, dataset, split, index)
    num_frames = 1 if dataset == "refcoco" else int(rng.integers(6, 11))
    lure = {"lure": True, "control": False}.get(split, bool(rng.random() < 0.5))
    scene = sample_clutter_scene(rng, lure=lure, num_frames=num_frames, noise_seed=int(rng.integers(2**31)))
    return scene, rng


def _clutter_texts(scene: ClutterScene, split: str, rng: np.random.Generator) -> list[str]:
    """One expression per evaluation sample, up to two per training sample."""
    how_many = 1 if split != "clutter_train" else min(len(scene.expressions), int(rng.integers(1, 3)))
    return [scene.expressions[i] for i in rng.choice(len(scene.expressions), size=how_many, replace=False)]


# --------------------------------------------------------------------------- RefCOCO


def _write_refcoco(refer_dir: Path, seed: int, counts: Counts, clutter: ClutterCounts | None = None) -> dict[str, Any]:
    dataset_dir = refer_dir / "refcoco"
    image_dir = refer_dir / "images" / "mscoco" / "images" / "train2014"
    dataset_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, refs, distractors = [], [], [], {}
    ids = {"image": 0, "ann": 0, "ref": 0, "sent": 0}
    split_counts = {"train": counts.images, "val": counts.image_eval, "drift": counts.image_eval}
    for split, n in split_counts.items():
        for index in range(n):
            scene, targets, rng = synthetic_image_scene(seed, split, index)
            ids["image"] += 1
            image_id = ids["image"]
            file_name = f"COCO_train2014_{image_id:012d}.jpg"
            frame, masks = scene.render(0)
            _save_jpeg(frame, image_dir / file_name)
            images.append({"id": image_id, "file_name": file_name, "height": scene.height, "width": scene.width})
            ann_of_object = {}
            for obj in scene.objects:
                ids["ann"] += 1
                ann_of_object[obj.object_id] = ids["ann"]
                rle = encode_mask(masks[obj.object_id])
                # Polygons, as RefCOCO's annotations are: the official refer API's getMask and
                # LISA's loader index segmentation[0] and cannot read an RLE dict there. (The
                # readers' RLE path is tested with hand-written fixtures.) The rendered mask is
                # this polygon rasterised by pycocotools, so the two agree bit for bit.
                annotations.append({
                    "id": ids["ann"], "image_id": image_id, "category_id": SHAPES.index(obj.shape) + 1,
                    "segmentation": [obj.polygon(0)], "area": rle_area(rle), "bbox": rle_bbox(rle), "iscrowd": 0,
                })
            for object_ids, texts in targets:
                ids["ref"] += 1
                ann_id = ann_of_object[object_ids[0]]
                sentences = []
                for text in texts:
                    ids["sent"] += 1
                    sentences.append({"tokens": text.split(), "raw": text, "sent_id": ids["sent"], "sent": text})
                refs.append({
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                    "ann_id": ann_id,
                    "ref_id": ids["ref"],
                    "image_id": image_id,
                    "split": split,
                    "sentences": sentences,
                    "category_id": SHAPES.index(scene.objects[object_ids[0]].shape) + 1,
                })
                distractor = scene.distractor_of.get(object_ids[0])
                if distractor is not None:
                    distractors[str(ids["ref"])] = [ann_of_object[distractor]]
    clutter_entries: dict[str, Any] = {}
    if clutter is not None:
        for split, n in clutter.image_splits().items():
            split_counts[split] = n
            for index in range(n):
                _clutter_image(seed, split, index, image_dir, ids, images, annotations, refs, clutter_entries)
    instances = {
        "info": {"description": "SALMA synthetic shapes (RefCOCO format)", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)],
    }
    (dataset_dir / "instances.json").write_text(json.dumps(instances))
    with (dataset_dir / "refs(unc).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)
    (dataset_dir / DISTRACTORS_FILE).write_text(json.dumps(distractors, indent=1))
    if clutter_entries:
        (dataset_dir / CLUTTER_FILE).write_text(json.dumps(clutter_entries))
    return _dataset_entry("refcoco", dataset_dir, split_counts)


def _clutter_image(seed, split, index, image_dir, ids, images, annotations, refs, clutter_entries) -> None:
    """One clutter-split image: the objects as annotations, the clutter only in the sidecar."""
    scene, rng = synthetic_clutter_scene("refcoco", seed, split, index)
    frame, masks, region = scene.render(0)
    ids["image"] += 1
    image_id = ids["image"]
    file_name = f"COCO_train2014_{image_id:012d}.jpg"
    _save_jpeg(frame, image_dir / file_name)
    images.append({"id": image_id, "file_name": file_name, "height": scene.scene.height, "width": scene.scene.width})
    target_ann = None
    for obj in scene.scene.objects:
        ids["ann"] += 1
        rle = encode_mask(masks[obj.object_id])
        annotations.append({
            "id": ids["ann"], "image_id": image_id, "category_id": SHAPES.index(obj.shape) + 1,
            "segmentation": [obj.polygon(0)], "area": rle_area(rle), "bbox": rle_bbox(rle), "iscrowd": 0,
        })
        if obj.object_id == scene.target_id:
            target_ann = ids["ann"]
    sentences = []
    for text in _clutter_texts(scene, split, rng):
        ids["sent"] += 1
        sentences.append({"tokens": text.split(), "raw": text, "sent_id": ids["sent"], "sent": text})
    ids["ref"] += 1
    target = scene.scene.objects[scene.target_id]
    refs.append({
        "sent_ids": [s["sent_id"] for s in sentences],
        "file_name": f"COCO_train2014_{image_id:012d}_{target_ann}.jpg",
        "ann_id": target_ann, "ref_id": ids["ref"], "image_id": image_id, "split": split,
        "sentences": sentences, "category_id": SHAPES.index(target.shape) + 1,
    })
    union = np.logical_or.reduce(list(masks.values()))
    clutter_entries[str(ids["ref"])] = {"lure": scene.lure, "masks": [encode_mask(region)], "objects": [encode_mask(union)]}


# --------------------------------------------------------------------------- MeViS


def _write_mevis(root: Path, seed: int, counts: Counts, clutter: ClutterCounts | None = None) -> dict[str, Any]:
    split_counts = {"train": counts.videos, "valid_u": counts.video_eval, "drift": counts.video_eval}
    for split, n in split_counts.items():
        split_dir = root / split
        videos: dict[str, Any] = {}
        mask_dict: dict[str, Any] = {}
        distractors: dict[str, list[int]] = {}
        next_anno = 0
        for index in range(n):
            scene, targets, rng = synthetic_video_scene("mevis", seed, split, index)
            num_frames = scene.num_frames
            video_id = f"{split}_{index:05d}"
            frame_names = [f"{t:05d}" for t in range(num_frames)]
            tracks = _render_video(scene, split_dir / "JPEGImages" / video_id, frame_names)
            anno_of_object = {}
            for obj in scene.objects:
                anno_of_object[obj.object_id] = next_anno
                mask_dict[str(next_anno)] = tracks[obj.object_id]
                next_anno += 1
            expressions = {}
            for object_ids, texts in targets:
                for text in texts:
                    exp_id = str(len(expressions))
                    expressions[exp_id] = {
                        "exp": text, "obj_id": list(object_ids), "anno_id": [anno_of_object[i] for i in object_ids],
                    }
                    distractor = scene.distractor_of.get(object_ids[0])
                    if distractor is not None and len(object_ids) == 1:
                        distractors[f"{video_id}/{exp_id}"] = [anno_of_object[distractor]]
            videos[video_id] = {"expressions": expressions, "vid_id": index, "frames": frame_names}
        split_dir.mkdir(parents=True, exist_ok=True)
        (split_dir / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
        (split_dir / "mask_dict.json").write_text(json.dumps(mask_dict))
        if distractors:
            (split_dir / DISTRACTORS_FILE).write_text(json.dumps(distractors, indent=1))
    if clutter is not None:
        for split, n in clutter.video_splits().items():
            split_counts[split] = n
            _write_mevis_clutter(root / split, seed, split, n)
    return _dataset_entry("mevis", root, split_counts)


def _write_mevis_clutter(split_dir: Path, seed: int, split: str, n: int) -> None:
    """A MeViS-format clutter split: objects in ``mask_dict.json``, clutter in the sidecar."""
    videos: dict[str, Any] = {}
    mask_dict: dict[str, Any] = {}
    clutter_entries: dict[str, Any] = {}
    for index in range(n):
        scene, rng = synthetic_clutter_scene("mevis", seed, split, index)
        video_id = f"{split}_{index:05d}"
        frame_names = [f"{t:05d}" for t in range(scene.scene.num_frames)]
        tracks: dict[int, list[dict | None]] = {obj.object_id: [] for obj in scene.scene.objects}
        regions, unions = [], []
        for t, name in enumerate(frame_names):
            frame, masks, region = scene.render(t)
            _save_jpeg(frame, split_dir / "JPEGImages" / video_id / f"{name}.jpg")
            for object_id, mask in masks.items():
                tracks[object_id].append(encode_mask(mask) if mask.any() else None)
            regions.append(encode_mask(region) if region.any() else None)
            unions.append(encode_mask(np.logical_or.reduce(list(masks.values()))))
        anno_of_object = {}
        for obj in scene.scene.objects:
            anno_of_object[obj.object_id] = len(mask_dict)
            mask_dict[str(len(mask_dict))] = tracks[obj.object_id]
        expressions = {}
        for text in _clutter_texts(scene, split, rng):
            exp_id = str(len(expressions))
            expressions[exp_id] = {"exp": text, "obj_id": [scene.target_id], "anno_id": [anno_of_object[scene.target_id]]}
            clutter_entries[f"{video_id}/{exp_id}"] = {"lure": scene.lure, "masks": regions, "objects": unions}
        videos[video_id] = {"expressions": expressions, "vid_id": index, "frames": frame_names}
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    (split_dir / "mask_dict.json").write_text(json.dumps(mask_dict))
    (split_dir / CLUTTER_FILE).write_text(json.dumps(clutter_entries))


def _render_video(scene: Scene, folder: Path, frame_names: Sequence[str]) -> dict[int, list[dict | None]]:
    """Write the frames; return each object's per-frame RLE (``None`` where it is not visible)."""
    tracks: dict[int, list[dict | None]] = {obj.object_id: [] for obj in scene.objects}
    for t, name in enumerate(frame_names):
        frame, masks = scene.render(t)
        _save_jpeg(frame, folder / f"{name}.jpg")
        for object_id, mask in masks.items():
            tracks[object_id].append(encode_mask(mask) if mask.any() else None)
    return tracks


# --------------------------------------------------------------------------- Ref-YouTube-VOS


def _palette() -> list[int]:
    """DAVIS-style palette: index 0 black, then distinct colours."""
    palette = [0, 0, 0]
    for i in range(1, 256):
        r = g = b = 0
        c = i
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


# meta.json categories must be YouTube-VOS category names (loaders such as ReferFormer's map them
# through the 65-entry YouTube-VOS category dictionary); each shape takes the closest one.
YTVOS_CATEGORY = {"circle": "frisbee", "square": "sign", "triangle": "sign", "diamond": "sign", "star": "others"}


def _write_ref_youtube_vos(root: Path, seed: int, counts: Counts) -> dict[str, Any]:
    split_counts = {"train": counts.videos, "valid": counts.video_eval}
    palette = _palette()
    for split, n in split_counts.items():
        split_dir = root / split
        videos: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for index in range(n):
            scene, targets, rng = synthetic_video_scene("ref_youtube_vos", seed, split, index)
            num_frames = scene.num_frames
            video_id = f"{index:04d}{split[0]}{int(rng.integers(16**6)):06x}"
            # Ref-YouTube-VOS frames are every 5th frame of the source video.
            frame_names = [f"{5 * t:05d}" for t in range(num_frames)]
            for t, name in enumerate(frame_names):
                frame, masks = scene.render(t)
                _save_jpeg(frame, split_dir / "JPEGImages" / video_id / f"{name}.jpg")
                ids = np.zeros((scene.height, scene.width), dtype=np.uint8)
                for object_id, mask in masks.items():
                    ids[mask] = object_id + 1  # 0 is the background
                png = Image.frombytes("P", (scene.width, scene.height), ids.tobytes())
                png.putpalette(palette)
                png_path = split_dir / "Annotations" / video_id / f"{name}.png"
                png_path.parent.mkdir(parents=True, exist_ok=True)
                png.save(png_path)
            expressions = {}
            for object_ids, texts in targets:
                if len(object_ids) != 1:
                    continue  # one object per expression in Ref-YouTube-VOS
                for text in texts:
                    expressions[str(len(expressions))] = {"exp": text, "obj_id": str(object_ids[0] + 1)}
            videos[video_id] = {"expressions": expressions, "frames": frame_names}
            objects = {
                str(o.object_id + 1): {"category": YTVOS_CATEGORY[o.shape], "frames": frame_names} for o in scene.objects
            }
            meta[video_id] = {"objects": objects}
        expressions_dir = root / "meta_expressions" / split
        expressions_dir.mkdir(parents=True, exist_ok=True)
        (expressions_dir / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
        (split_dir / "meta.json").write_text(json.dumps({"videos": meta}))
    # The release's valid expressions file also lists the test videos; the reference inference
    # scripts (ReferFormer's inference_ytvos.py and those derived from it) open
    # meta_expressions/test/meta_expressions.json to take them out. The synthetic data has no
    # test videos: the file is there, with none.
    test_dir = root / "meta_expressions" / "test"
    test_dir.mkdir(parents=True, exist_ok=True)
    (test_dir / "meta_expressions.json").write_text(json.dumps({"videos": {}}))
    return _dataset_entry("ref_youtube_vos", root, split_counts)


# --------------------------------------------------------------------------- LLaVA VQA

_TEXT_ONLY = [
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a square have?", "A square has four sides."),
    ("Which shape has no corners?", "A circle has no corners."),
    ("What colour do you get when you mix blue and yellow?", "Green."),
    ("What colour do you get when you mix red and yellow?", "Orange."),
    ("How many points does the star shape usually have?", "Five."),
]


def _questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Questions about the scene whose answers follow from it unambiguously."""
    shapes = [o.shape for o in scene.objects]
    colors = [o.color for o in scene.objects]
    qa = [("How many objects are in the image?", f"There are {len(shapes)} objects.")]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    n = shapes.count(shape)
    count_answer = {0: f"There are no {shape}s.", 1: f"There is one {shape}."}.get(n, f"There are {n} {shape}s.")
    qa.append((f"How many {shape}s are there?", count_answer))
    for obj in scene.objects:
        if shapes.count(obj.shape) == 1:
            qa.append((f"What color is the {obj.shape}?", f"The {obj.shape} is {obj.color}."))
        if colors.count(obj.color) == 1:
            qa.append((f"What shape is the {obj.color} object?", f"It is a {obj.shape}."))
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    present = any(o.color == color and o.shape == shape for o in scene.objects)
    qa.append((f"Is there a {color} {shape} in the image?", "Yes." if present else "No."))
    return qa


def _write_llava(root: Path, seed: int, counts: Counts) -> dict[str, Any]:
    split_counts = {"train": counts.images, "val": counts.image_eval}
    for split, n in split_counts.items():
        entries = []
        for index in range(n):
            rng = _rng(seed, "llava", split, index)
            sample_id = f"{split}_{index:06d}"
            if rng.random() < 0.05:
                question, answer = _TEXT_ONLY[int(rng.integers(len(_TEXT_ONLY)))]
                entries.append({"id": sample_id, "conversations": [
                    {"from": "human", "value": question}, {"from": "gpt", "value": answer},
                ]})
                continue
            scene = sample_scene(rng, noise_seed=int(rng.integers(2**31)))
            frame, _ = scene.render(0)
            image = f"{sample_id}.jpg"
            _save_jpeg(frame, root / "images" / image)
            qa = _questions(scene, rng)
            chosen = rng.choice(len(qa), size=min(len(qa), int(rng.integers(1, 4))), replace=False)
            conversations = []
            for turn, i in enumerate(chosen):
                question, answer = qa[int(i)]
                conversations.append({"from": "human", "value": ("<image>\n" if turn == 0 else "") + question})
                conversations.append({"from": "gpt", "value": answer})
            entries.append({"id": sample_id, "image": f"images/{image}", "conversations": conversations})
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.json").write_text(json.dumps(entries, indent=1))
    return _dataset_entry("llava", root, split_counts)
