"""COCO RLE helpers (pycocotools): encode, decode, merge, polygons, validation.

Every mask the readers store is a compressed COCO RLE ``{"size": [h, w], "counts": str}``:
pycocotools' compressed string with ``counts`` decoded to ``str`` so the record stays
JSON-serialisable. ``segmentation_to_rle`` accepts the three COCO segmentation encodings
(polygon list, uncompressed RLE with a list of run lengths, compressed RLE with ``bytes`` or
``str`` counts) and always returns the stored form.

pycocotools decodes a malformed counts string without complaint (and may write past the mask
buffer), so ``validate_rle`` re-parses the string and checks that the runs cover exactly
``h * w`` pixels before anything is decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

RLE = dict[str, Any]


class MaskSizeError(ValueError):
    """An RLE whose ``size`` is not the size of the image it annotates."""


class PolygonError(ValueError):
    """A polygon that cannot be rasterised safely: non-finite or far-out coordinates."""


# pycocotools rasterises a polygon by walking each edge pixel by pixel (at 5x resolution): its
# cost grows with the edge length, so a coordinate of 1e12 exhausts memory and NaN / inf crash
# the process. Coordinates are therefore checked first: they must be finite and lie within one
# image size beyond the image on each side (parts of an object may legitimately stick out a
# little; nothing real lies further out). The largest image side accepted anywhere:
MAX_IMAGE_SIDE = 1 << 15


def check_polygon(coordinates: Sequence[Any], height: int, width: int) -> list[float]:
    """``[x0, y0, x1, y1, ...]`` as floats; ``PolygonError`` when it cannot be rasterised safely."""
    try:
        values = [float(v) for v in coordinates]
    except (TypeError, ValueError) as err:
        raise PolygonError(f"a polygon coordinate is not a number: {err}") from None
    if len(values) < 6 or len(values) % 2:
        # pycocotools reads a 4-number list as a box, so a polygon needs at least 3 points.
        raise PolygonError(f"a polygon needs an even number (>= 6) of coordinates, got {len(values)}")
    array = np.asarray(values)
    if not np.isfinite(array).all():
        raise PolygonError("a polygon has a NaN or infinite coordinate")
    xs, ys = array[0::2], array[1::2]
    if xs.min() < -width or xs.max() > 2 * width or ys.min() < -height or ys.max() > 2 * height:
        raise PolygonError(
            f"a polygon reaches ({xs.min():.4g}..{xs.max():.4g}, {ys.min():.4g}..{ys.max():.4g}), more than one "
            f"image size outside the {width}x{height} image"
        )
    return values


def check_image_size(height: Any, width: Any) -> tuple[int, int]:
    """(height, width) as ints in 1..``MAX_IMAGE_SIDE``; ValueError otherwise (a missing,
    non-integer, boolean, zero, negative or absurd size from an annotation file)."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGE_SIDE:
            raise ValueError(f"{name} {value!r} is not an integer in 1..{MAX_IMAGE_SIDE}")
    return height, width


def encode_mask(mask: np.ndarray) -> RLE:
    """(H, W) bool/uint8 mask -> compressed RLE with ``str`` counts."""
    if mask.ndim != 2:
        raise ValueError(f"encode_mask expects an (H, W) mask, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: RLE) -> np.ndarray:
    """Compressed RLE (``str`` or ``bytes`` counts) -> (H, W) bool mask. Validates first.

    Decoded from the validated run lengths with numpy rather than ``pycocotools.mask.decode``
    (same result; pycocotools' decode also raises a numpy 2 DeprecationWarning on every call).
    """
    runs = _validated_runs(rle)
    height, width = int(rle["size"][0]), int(rle["size"][1])
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True  # runs alternate background, foreground, starting with background
    flat = np.repeat(values, runs)  # (W * H,) column-major, like COCO
    return flat.reshape(width, height).T.copy()


def empty_rle(height: int, width: int) -> RLE:
    return encode_mask(np.zeros((height, width), dtype=bool))


def merge_rles(rles: Sequence[RLE]) -> RLE:
    """Union of several masks of the same size (at least one)."""
    if not rles:
        raise ValueError("merge_rles needs at least one RLE")
    sizes = {tuple(r["size"]) for r in rles}
    if len(sizes) != 1:
        raise ValueError(f"merge_rles: masks of different sizes {sorted(sizes)}")
    if len(rles) == 1:
        return stored_rle(rles[0])
    for rle in rles:
        validate_rle(rle)  # pycocotools' merge trusts the runs it is given
    merged = coco_mask.merge([_as_pycocotools(r) for r in rles], intersect=0)
    return stored_rle(merged)


def polygons_to_rle(polygons: Sequence[Sequence[float]], height: int, width: int) -> RLE:
    """COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` (parts of one object) -> one merged RLE."""
    if not polygons:
        return empty_rle(height, width)
    check_image_size(height, width)
    parts = []
    for p in polygons:
        if not isinstance(p, (list, tuple)):
            raise PolygonError(f"a polygon is a list of coordinates, got {type(p).__name__}")
        parts.append(check_polygon(p, height, width))
    return merge_rles([stored_rle(r) for r in coco_mask.frPyObjects(parts, height, width)])


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> RLE:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) -> stored RLE."""
    if isinstance(segmentation, list):
        if segmentation and isinstance(segmentation[0], dict):
            # A list of RLEs (GranDf's ``rle_masks``): parts of one object.
            return merge_rles([segmentation_to_rle(s, height, width) for s in segmentation])
        return polygons_to_rle(segmentation, height, width)
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(s) for s in segmentation["size"]]
        if size != [height, width]:
            raise MaskSizeError(f"RLE size {size} disagrees with the image size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            # Uncompressed RLE (COCO's iscrowd annotations).
            if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
                raise ValueError("uncompressed RLE counts must be non-negative integers")
            if sum(counts) != height * width:
                raise ValueError("uncompressed RLE runs do not cover the image")
            return stored_rle(coco_mask.frPyObjects(segmentation, height, width))
        rle = stored_rle(segmentation)
        validate_rle(rle)
        return rle
    raise ValueError(f"unrecognised segmentation of type {type(segmentation).__name__}")


def refer_mask_rle(segmentation: Any, height: int, width: int) -> RLE:
    """A RefCOCO-family annotation's mask with the official semantics for several parts.

    The ``refer`` API's ``getMask`` and LISA's RefCOCO loader decode the parts (polygons, or a
    list of RLEs) and *sum* them into a uint8 mask; LISA's ``intersectionAndUnionGPU`` then
    counts only the values 0 and 1 (``torch.histc`` over [0, 1] drops the rest). A pixel that two
    or more parts cover (sum >= 2) is therefore not foreground: it weighs in the metric exactly
    as background does. So the foreground is where the uint8 sum is 1 — where exactly one part
    covers the pixel (a sum of 257 wraps to 1 in uint8, as it does there). Where parts do not
    overlap this is their union, as before; a single part or a single RLE is unchanged.
    """
    if not isinstance(segmentation, list) or len(segmentation) < 2:
        return segmentation_to_rle(segmentation, height, width)
    parts = [decode_rle(segmentation_to_rle([part] if not isinstance(part, dict) else part, height, width))
             for part in segmentation]  # fmt: skip
    summed = np.zeros((height, width), dtype=np.uint8)
    for part in parts:
        summed += part.astype(np.uint8)  # uint8 arithmetic, as np.sum(...).astype(np.uint8) there
    return encode_mask(summed == 1)


def rle_entry_problem(entry: Any) -> str | None:
    """Why one stored mask entry of a ``mask_dict`` is unusable (it is None or an RLE dict with
    a two-number ``size`` and string ``counts``), or None. Structure only; the runs are checked
    when the mask is decoded or merged (``validate_rle``)."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        return f"a mask entry is a {type(entry).__name__}, not an RLE object or null"
    if "counts" not in entry or "size" not in entry:
        return f"an RLE lacks {'counts' if 'counts' not in entry else 'size'}"
    size = entry["size"]
    integers = isinstance(size, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    if not (integers and len(size) == 2):
        return f"an RLE size is {size!r}, not [height, width]"
    if not isinstance(entry["counts"], (str, bytes)):
        return f"RLE counts are a {type(entry['counts']).__name__}, not a string"
    return None


def rle_area(rle: RLE) -> int:
    return int(coco_mask.area(_as_pycocotools(rle)))


def rle_bbox(rle: RLE) -> list[float]:
    """[x, y, w, h] like COCO's ``bbox``."""
    return [float(v) for v in coco_mask.toBbox(_as_pycocotools(rle))]


def validate_rle(rle: Any) -> None:
    """Raise ValueError unless ``rle`` is a well-formed compressed RLE."""
    _validated_runs(rle)


def _validated_runs(rle: Any) -> list[int]:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE is a dict with 'size' and 'counts'")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(int(s) >= 0 for s in size)):
        raise ValueError(f"bad RLE size {size!r}")
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if not isinstance(counts, str):
        raise ValueError("compressed RLE counts must be a string")
    runs = _parse_counts(counts)
    if any(r < 0 for r in runs):
        raise ValueError("RLE has a negative run length")
    total = sum(runs)
    expected = int(size[0]) * int(size[1])
    if total != expected:
        raise ValueError(f"RLE runs cover {total} pixels, the mask has {expected}")
    return runs


def _parse_counts(text: str) -> list[int]:
    """Run lengths of a COCO compressed counts string.

    Format (pycocotools ``rleFrString``): each run is a little-endian group of 5-bit chunks
    stored as ``chr(chunk + 48)``; bit 0x20 of a chunk means "more chunks follow", bit 0x10 of the
    last chunk is the sign; from the third run on, the value is a delta to the run two before.
    """
    runs: list[int] = []
    pos = 0
    while pos < len(text):
        value = 0
        shift = 0
        while True:
            if pos >= len(text):
                raise ValueError("RLE counts string ends inside a run")
            chunk = ord(text[pos]) - 48
            if not 0 <= chunk < 64:
                raise ValueError(f"RLE counts has an invalid character {text[pos]!r}")
            pos += 1
            value |= (chunk & 0x1F) << shift
            shift += 5
            if not chunk & 0x20:
                if chunk & 0x10:
                    value -= 1 << shift
                break
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _as_pycocotools(rle: RLE) -> RLE:
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def stored_rle(rle: RLE) -> RLE:
    """The same RLE with ``str`` counts and ``int`` sizes (no validation)."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}
