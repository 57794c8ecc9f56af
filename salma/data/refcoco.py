"""RefCOCO / RefCOCO+ / RefCOCOg reader (the ``refer`` API layout).

One format, ``refcoco``, for the three datasets; ``dataset`` picks the name and the default
``split_by`` (``refcoco`` and ``refcoco+``: ``unc``; ``refcocog``: ``umd``; ``google`` is accepted
for RefCOCOg's older split). Layout::

    <root>/refs(<split_by>).p     pickled list of refs: {"ref_id", "ann_id", "image_id", "split",
                                  "category_id", "sentences": [{"sent", "raw", "sent_id", "tokens"}], ...}
    <root>/instances.json         COCO {"images", "annotations", "categories"}; segmentations are
                                  polygons (several parts per object possible) or RLE
    <image_folder>/<file_name>    default ``<root>/../images/mscoco/images/train2014`` (refer's layout)

``root`` is the dataset folder itself (``.../refer/data/refcoco``). Split names follow ``refer``:
``train``, ``val``, ``test`` (every ``test*`` split), ``testA`` / ``testB`` / ``testC`` (the test
splits containing that letter); any other name (such as the synthetic ``drift``) matches exactly.

One record per image holding every ref of that image in the split: ``ref_id`` as ``Referent.ref_id``,
the ref's ``ann_id`` as ``object_ids``, all its sentences (``sent``) as ``expressions``, one mask.
An object of several parts gets the official mask semantics (``salma.data.masks.refer_mask_rle``:
the parts are summed as the ``refer`` API and LISA do; where two parts overlap the pixel is not
foreground). ``meta["ref_id"]`` keeps the ref id as the pickle has it (an int in the releases).

``refs(*).p`` is a pickle: it is read through the restricted unpickler of
``salma.data.annotation_files`` (builtin containers and scalars only; anything else is a
``DatasetFormatError`` naming the file), so a poisoned file cannot run code.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from salma.data.annotation_files import load_json_file, load_pickle_file, require_list, require_mapping
from salma.data.clutter import CLUTTER_FILE, attach_clutter, load_clutter
from salma.data.distractors import load_distractors
from salma.data.errors import BadRecordReporter, DatasetFormatError, OnBad
from salma.data.confinement import confined_or_reported
from salma.data.masks import RLE, MaskSizeError, PolygonError, check_image_size, merge_rles, refer_mask_rle, rle_area
from salma.data.record import Referent, SampleRecord
from salma.data.video_expressions import clean_expression, expression_problem
from salma.data.formats import register_format

RefDataset = Literal["refcoco", "refcoco+", "refcocog"]
_DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


def refs_file(root: str | Path, dataset: str, split_by: str | None) -> Path:
    """``<root>/refs(<split_by>).p``, ``split_by`` defaulting to the dataset's own."""
    if dataset not in _DEFAULT_SPLIT_BY:
        raise ValueError(f"dataset must be one of {sorted(_DEFAULT_SPLIT_BY)}, got {dataset!r}")
    return Path(root).absolute() / f"refs({split_by or _DEFAULT_SPLIT_BY[dataset]}).p"


def refcoco_splits(root: str | Path, *, dataset: RefDataset, split_by: str | None, **_: Any) -> list[str]:
    """The split names the folder's refs file holds (train, val, testA, ...)."""
    refs_path = refs_file(root, dataset, split_by)
    refs = require_list(load_pickle_file(refs_path), refs_path)
    return sorted({str(ref["split"]) for ref in refs if isinstance(ref, dict) and isinstance(ref.get("split"), str)})


@register_format("refcoco", media="image", scoring="image", splits=refcoco_splits)
def read_refcoco(
    root: str | Path,
    split: str,
    *,
    dataset: RefDataset = "refcoco",
    split_by: str | None = None,
    image_folder: str | Path | None = None,
    check_files: bool = True,
    allow_outside_root: bool = False,
    on_bad: OnBad | None = None,
) -> list[SampleRecord]:
    """Read one split; ``check_files`` checks that every image file exists. ``file_name`` must
    stay inside the image folder unless ``allow_outside_root`` (``salma.data.confinement``)."""
    root_dir = Path(root).absolute()
    refs_path = refs_file(root_dir, dataset, split_by)
    instances_path = root_dir / "instances.json"
    images_dir = (
        Path(image_folder).absolute()
        if image_folder is not None
        else root_dir.parent / "images" / "mscoco" / "images" / "train2014"
    )

    refs = require_list(load_pickle_file(refs_path), refs_path)
    instances = require_mapping(load_json_file(instances_path), instances_path)
    for key in ("images", "annotations"):
        if not isinstance(instances.get(key), list):
            raise DatasetFormatError(instances_path, f"expected a list under {key!r}")
    images, duplicate_images = _by_id(instances["images"])
    annotations, duplicate_annotations = _by_id(instances["annotations"])
    distractors = load_distractors(root_dir)

    refs_of_image: dict[Any, list[dict]] = defaultdict(list)
    for ref in refs:
        if not isinstance(ref, dict) or not {"ref_id", "ann_id", "image_id", "split", "sentences"} <= set(ref):
            raise DatasetFormatError(
                refs_path, f"a ref lacks one of ref_id/ann_id/image_id/split/sentences: {ref!r:.200}"
            )
        if _in_split(str(ref["split"]), split):
            refs_of_image[ref["image_id"]].append(ref)

    reporter = BadRecordReporter(on_bad, reader="read_refcoco", root=root, split=split)
    context = _Context(refs_path, instances_path, annotations, duplicate_annotations, distractors, reporter)
    records = []
    for image_id in sorted(refs_of_image):
        image = images.get(image_id)
        if image is None:
            reporter.report(
                instances_path, "missing image file", sample_id=str(image_id), detail="image id not in instances.json"
            )
            continue
        if image_id in duplicate_images:
            reporter.report(instances_path, "duplicate id", sample_id=str(image_id),
                            detail="two images have this id: which pixels the refs describe is unknown")
            continue
        try:
            height, width = check_image_size(image.get("height"), image.get("width"))
        except ValueError as exc:
            reporter.report(instances_path, "invalid image size", sample_id=str(image_id), detail=str(exc))
            continue
        path = confined_or_reported(reporter, instances_path, images_dir, image.get("file_name"),
                                    sample_id=str(image_id), allow_outside_root=allow_outside_root)
        if path is None:
            continue
        if check_files and not path.is_file():
            reporter.report(path, "missing image file", sample_id=str(image_id))
            continue
        referents = []
        for ref in sorted(refs_of_image[image_id], key=lambda r: r["ref_id"]):
            referent = _referent(ref, image_id, height, width, context)
            if referent is not None:
                referents.append(referent)
        if not referents:
            reporter.report(refs_path, "no usable referents", sample_id=str(image_id))
            continue
        records.append(
            SampleRecord(
                source=dataset,
                split=split,
                sample_id=str(image_id),
                media="image",
                height=height,
                width=width,
                frames=[str(path)],
                referents=referents,
                meta={"image_id": image_id, "file_name": image.get("file_name")},
            )
        )
    reporter.finish()
    attach_clutter(records, load_clutter(root_dir), root_dir / CLUTTER_FILE, video=False)
    return records


def _by_id(items: list) -> tuple[dict[Any, dict], set[Any]]:
    """{id: item} of the COCO ``images`` or ``annotations`` list, and the ids given twice."""
    by_id: dict[Any, dict] = {}
    duplicates: set[Any] = set()
    for item in items:
        if isinstance(item, dict) and "id" in item:
            if item["id"] in by_id:
                duplicates.add(item["id"])
            by_id[item["id"]] = item
    return by_id, duplicates


class _Context:
    def __init__(self, refs_path, instances_path, annotations, duplicate_annotations, distractors, reporter) -> None:
        self.refs_path = refs_path
        self.instances_path = instances_path
        self.annotations = annotations
        self.duplicate_annotations = duplicate_annotations
        self.distractors = distractors
        self.reporter: BadRecordReporter = reporter


def _referent(ref: dict, image_id: Any, height: int, width: int, ctx: _Context) -> Referent | None:
    key = f"{image_id}/{ref['ref_id']}"
    if not isinstance(ref["sentences"], list):
        ctx.reporter.report(ctx.refs_path, "malformed entry", sample_id=key,
                            detail=f"'sentences' is a {type(ref['sentences']).__name__}, not a list")
        return None
    sentences = []
    for sentence in ref["sentences"]:
        raw = sentence.get("sent") if isinstance(sentence, dict) else None
        text = clean_expression(raw)
        if text is None:
            sent_id = sentence.get("sent_id") if isinstance(sentence, dict) else None
            reason = expression_problem(raw) or "empty expression"
            ctx.reporter.report(ctx.refs_path, reason, sample_id=key, detail=f"sent_id {sent_id}")
            continue
        sentences.append(text)
    if not sentences:
        return None
    mask = _annotation_mask(ref["ann_id"], height, width, key, ctx)
    if mask is None:
        return None
    if rle_area(mask) == 0:
        # A polygon entirely outside its image (or parts that cancel out): training on it
        # would teach "nothing is there" for a sentence that names an object.
        ctx.reporter.report(ctx.instances_path, "mask is empty", sample_id=key, detail=f"ann_id {ref['ann_id']}")
        return None
    meta: dict[str, Any] = {
        "ref_id": ref["ref_id"],  # as refs(*).p has it (an int in the releases): results.json keeps it
        "mask_file": str(ctx.instances_path),
        "category_id": ref.get("category_id"),
        "sent_ids": [s.get("sent_id") for s in ref["sentences"] if isinstance(s, dict)],
    }
    distractor_ids = ctx.distractors.get(str(ref["ref_id"]))
    if distractor_ids is not None:
        parts = [_annotation_mask(ann_id, height, width, key, ctx) for ann_id in distractor_ids]
        if any(p is None for p in parts):
            return None
        meta["distractor_ids"] = distractor_ids
        meta["distractor_masks"] = [merge_rles(parts)] if parts else [None]
    return Referent(
        ref_id=str(ref["ref_id"]), object_ids=[int(ref["ann_id"])], expressions=sentences, masks=[mask], meta=meta
    )


def _annotation_mask(ann_id: Any, height: int, width: int, key: str, ctx: _Context) -> RLE | None:
    annotation = ctx.annotations.get(ann_id)
    if annotation is None:
        ctx.reporter.report(
            ctx.instances_path, "object missing from annotations", sample_id=key, detail=f"ann_id {ann_id}"
        )
        return None
    if ann_id in ctx.duplicate_annotations:
        ctx.reporter.report(ctx.instances_path, "duplicate id", sample_id=key,
                            detail=f"two annotations have id {ann_id}: which object is meant is unknown")
        return None
    try:
        return refer_mask_rle(annotation.get("segmentation"), height, width)
    except PolygonError as exc:
        ctx.reporter.report(ctx.instances_path, "malformed polygon", sample_id=key, detail=f"ann_id {ann_id}: {exc}")
        return None
    except MaskSizeError as exc:
        ctx.reporter.report(
            ctx.instances_path, "mask size disagrees with frame", sample_id=key, detail=f"ann_id {ann_id}: {exc}"
        )
        return None
    except ValueError as exc:
        ctx.reporter.report(ctx.instances_path, "malformed mask RLE", sample_id=key, detail=f"ann_id {ann_id}: {exc}")
        return None


def _in_split(ref_split: str, split: str) -> bool:
    """``refer.getRefIds`` semantics for the test splits, exact match otherwise."""
    if split in ("testA", "testB", "testC"):
        return ref_split.startswith("test") and split[-1] in ref_split
    if split == "test":
        return "test" in ref_split
    return ref_split == split
