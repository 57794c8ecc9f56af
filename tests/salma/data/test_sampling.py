"""``sample_counts`` predicts the frames and objects of the example ``sample_example`` makes."""

from __future__ import annotations

import random

import pytest

from salma.config import tiny_config
from salma.data.examples import ImageGeometry
from salma.data.sampling import SamplingOptions, sample_counts, sample_example
from salma.data.sources import read_source
from salma.data.synthetic import write_synthetic
from salma.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("sampling")
    write_synthetic(out, seed=2, num_images=6, num_videos=4)
    return out


@pytest.mark.parametrize(
    "fmt,root,split",
    [("refcoco", "refer/refcoco", "train"), ("mevis", "mevis", "train"), ("llava", "llava", "train")],
)
@pytest.mark.parametrize("num_frames,max_objects", [(2, 1), (3, 3), (8, 5)])
def test_the_counts_match_the_sampled_example(synthetic, fmt, root, split, num_frames, max_objects):
    records = read_source(fmt, synthetic / root, split)
    assert records
    options = SamplingOptions(num_frames=num_frames, max_objects=max_objects)
    tokenizer, geometry = build_tiny_tokenizer(), ImageGeometry.from_config(tiny_config())
    for k, record in enumerate(records):
        example = sample_example(record, rng=random.Random(k), options=options, tokenizer=tokenizer, geometry=geometry)
        counts = sample_counts(record, options)
        assert counts.frames == example["sam_frames"].shape[0]
        assert counts.video == (record.media == "video")
        assert (counts.objects, counts.frames) == example["gt_masks"].shape[:2]  # (O, F, S, S)
