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


def test_a_sample_longer_than_the_model_context_is_a_bad_record(synthetic):
    """Rejected and counted, not truncated: the tiny preset has 2,048 positions."""
    from salma.data.errors import BadRecordError

    record = read_source("mevis", synthetic / "mevis", "train")[0]
    for referent in record.referents:
        referent.expressions = ["the small red square " * 700]  # 3,500 words
    tokenizer, geometry = build_tiny_tokenizer(), ImageGeometry.from_config(tiny_config())
    assert geometry.context_tokens == 2048
    with pytest.raises(BadRecordError) as info:
        sample_example(record, rng=random.Random(0), options=SamplingOptions(num_frames=2, max_objects=1),
                       tokenizer=tokenizer, geometry=geometry)
    assert info.value.reason == "sequence longer than the model context"
    assert info.value.path.endswith("mask_dict.json") and "positions" in info.value.detail
