import numpy as np
import pytest
from pycocotools import mask as coco_mask

from salma.data.masks import (
    decode_rle,
    encode_mask,
    merge_rles,
    polygons_to_rle,
    segmentation_to_rle,
    validate_rle,
)
from salma.data.masks import MaskSizeError, _parse_counts

# pycocotools.mask.decode (the reference here) warns under numpy 2; the library does not call it.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_encode_decode_round_trip_bit_exact():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        mask = rng.random((h, w)) < rng.random()
        rle = encode_mask(mask)
        assert isinstance(rle["counts"], str) and rle["size"] == [h, w]
        np.testing.assert_array_equal(decode_rle(rle), mask)


def test_counts_parser_agrees_with_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(50):
        mask = rng.random((17, 23)) < 0.3
        rle = encode_mask(mask)
        runs = _parse_counts(rle["counts"])
        # pycocotools' own uncompressed runs (column-major) for the same mask
        flat = mask.T.reshape(-1).astype(np.uint8)
        expected, value, run = [], 0, 0
        for pixel in flat:
            if pixel == value:
                run += 1
            else:
                expected.append(run)
                value, run = pixel, 1
        expected.append(run)
        assert runs == expected


def test_merge_is_union_and_rejects_mixed_sizes():
    a = np.zeros((6, 8), dtype=bool)
    b = np.zeros((6, 8), dtype=bool)
    a[1:3, 1:3] = True
    b[2:5, 4:7] = True
    np.testing.assert_array_equal(decode_rle(merge_rles([encode_mask(a), encode_mask(b)])), a | b)
    with pytest.raises(ValueError):
        merge_rles([encode_mask(a), encode_mask(np.zeros((5, 8), dtype=bool))])


def test_polygons_merge_parts_like_pycocotools():
    parts = [[1.0, 1.0, 6.0, 1.0, 6.0, 6.0, 1.0, 6.0], [12.0, 8.0, 20.0, 8.0, 20.0, 14.0, 12.0, 14.0]]
    expected = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(parts, 16, 24))).astype(bool)
    mask = decode_rle(polygons_to_rle(parts, 16, 24))
    np.testing.assert_array_equal(mask, expected)
    assert mask[3, 3] and mask[10, 15] and not mask[7, 9]


def test_segmentation_to_rle_accepts_every_coco_encoding():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 6:10] = True
    compressed = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    uncompressed_counts = _parse_counts(encode_mask(mask)["counts"])
    for segmentation in (
        compressed,  # bytes counts
        {"size": [10, 12], "counts": compressed["counts"].decode()},  # str counts
        {"size": [10, 12], "counts": uncompressed_counts},  # uncompressed (iscrowd) RLE
        [[6.0, 2.0, 10.0, 2.0, 10.0, 5.0, 6.0, 5.0]],  # polygon
    ):
        rle = segmentation_to_rle(segmentation, 10, 12)
        assert isinstance(rle["counts"], str)
        if isinstance(segmentation, list):
            assert decode_rle(rle).sum() > 0
        else:
            np.testing.assert_array_equal(decode_rle(rle), mask)
    with pytest.raises(MaskSizeError):
        segmentation_to_rle({"size": [5, 5], "counts": compressed["counts"]}, 10, 12)


@pytest.mark.parametrize("counts", ["zzz", "0", "1", "", "9"])
def test_validate_rejects_malformed_counts(counts):
    # pycocotools would decode these without complaint
    with pytest.raises(ValueError):
        validate_rle({"size": [5, 7], "counts": counts})
