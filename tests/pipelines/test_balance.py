"""Balanced dealing of global batches across ranks (``pipelines.data.deal_balanced``)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pipelines.config import load_experiment
from pipelines.data import WorkerBatches, deal_balanced, example_cost, mixture_order
from salma.data.sampling import SampleCounts
from salma.data.synthetic import write_synthetic
from salma.tokenizer import build_tiny_tokenizer


def rank_shares(items: list[int], world_size: int, per_rank: int) -> list[list[int]]:
    """Per global batch, the work each rank gets when position p goes to rank p % world_size."""
    group = world_size * per_rank
    return [
        [sum(items[start + r : start + group : world_size]) for r in range(world_size)]
        for start in range(0, len(items) - group + 1, group)
    ]


@pytest.mark.parametrize("world_size,per_rank", [(2, 4), (2, 8), (3, 2), (4, 1)])
def test_each_global_batch_keeps_its_items_and_the_ranks_share_the_work(world_size, per_rank):
    rng = random.Random(world_size * 10 + per_rank)
    costs = [rng.choice([0, 1, 1, 1, 3, 9]) for _ in range(40 * world_size * per_rank)]
    group = world_size * per_rank
    dealt = deal_balanced(costs, costs, world_size=world_size, group=group)
    for start in range(0, len(costs), group):
        assert Counter(dealt[start : start + group]) == Counter(costs[start : start + group])
    spread_before = [max(s) - min(s) for s in rank_shares(costs, world_size, per_rank)]
    spread_after = [max(s) - min(s) for s in rank_shares(dealt, world_size, per_rank)]
    # Per batch, no rank is ahead by more than the largest single cost.
    assert all(after <= 9 for after in spread_after)
    if per_rank == 1:  # one example per rank: nothing to balance
        assert spread_after == spread_before
    else:
        assert sum(spread_after) < sum(spread_before)


def test_dealing_is_a_pure_function_and_equal_costs_keep_their_order():
    items = list("abcdefgh")
    assert deal_balanced(items, [1] * 8, world_size=2, group=4) == items
    costs = [3, 1, 2, 0, 5, 5, 4, 4]
    once = deal_balanced(items, costs, world_size=2, group=4)
    assert once == deal_balanced(items, costs, world_size=2, group=4)
    # Group 1, largest first: a (3) -> rank 0, c (2) -> rank 1, b (1) -> rank 1 (2 < 3), d -> rank 0
    # (rank 1 is full); each rank keeps its items in order: rank 0 a, d; rank 1 b, c.
    # Group 2: e, f (5, 5) -> ranks 0, 1; g, h (4, 4) -> ranks 0, 1 (ties go to the lower rank).
    assert once == list("abdcefgh")


def test_one_large_item_is_offset_by_the_others():
    """Longest-first: the rank given the one expensive item (a video) gets the cheapest of the
    rest, the best split with four items each (snake dealing by rows gave 133 against 84)."""
    costs = [90, 40, 17, 16, 15, 14, 13, 12]
    dealt = deal_balanced(costs, costs, world_size=2, group=8)
    assert rank_shares(dealt, 2, 4) == [[90 + 14 + 13 + 12, 40 + 17 + 16 + 15]]


def test_the_first_group_aligns_to_a_batch_started_in_the_previous_epoch():
    costs = [0, 0, 9, 9, 0, 0, 9, 1]
    dealt = deal_balanced(list(range(8)), costs, world_size=2, group=4, first=2)
    assert dealt[:2] == [0, 1]  # the first group (2 positions, equal costs) is left as it is
    assert sorted(dealt[2:6]) == [2, 3, 4, 5] and sorted(dealt[6:]) == [6, 7]
    # A trailing part row (fewer than world_size items) keeps its order.
    assert deal_balanced(list(range(5)), [0, 1, 2, 3, 4], world_size=2, group=4)[4:] == [4]


def test_the_cost_ranks_text_images_and_videos_as_training_does():
    text = SampleCounts(frames=0, objects=0, video=False)
    image1, image3 = SampleCounts(frames=1, objects=1, video=False), SampleCounts(frames=1, objects=3, video=False)
    video1, video3 = SampleCounts(frames=3, objects=1, video=True), SampleCounts(frames=3, objects=3, video=True)
    costs = [example_cost(c, tracking=True) for c in (text, image1, image3, video1, video3)]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    # An image with three objects has as many (object, frame) pairs as a one-object 3-frame video,
    # which costs more than twice as much (its frames are encoded and its object tracked).
    assert example_cost(video1, tracking=True) > 2 * example_cost(image3, tracking=True)
    # Tracking adds to videos only.
    assert example_cost(video3, tracking=False) < example_cost(video3, tracking=True)
    assert example_cost(image3, tracking=False) == example_cost(image3, tracking=True)


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="3 items but 2 costs"):
        deal_balanced([1, 2, 3], [1, 2], world_size=2, group=2)
    with pytest.raises(ValueError, match="world_size=0"):
        deal_balanced([1], [1], world_size=0, group=2)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("balance-data")
    write_synthetic(out, seed=5, num_images=9, num_videos=5)
    return out


def experiment(data_dir, *overrides: str):
    return load_experiment(
        None,
        [
            "model.preset=tiny",
            "data.num_frames=3",
            "data.max_objects=3",
            f"data.sources=[{{name: refcoco, format: refcoco, root: {data_dir / 'refer' / 'refcoco'}}},"
            f" {{name: mevis, format: mevis, root: {data_dir / 'mevis'}, repeats: 2}}]",
            "train.batch_size_per_worker=3",
            *overrides,
        ],
    )


@pytest.mark.parametrize("world_size", [2, 3])
def test_worker_shards_cover_each_epoch_once_with_the_same_global_batches(data_dir, world_size):
    """Every rank computes the same balanced permutation (epochs whose rank streams start
    part-way into a batch included), the shards partition the epoch, and each global batch holds
    the examples it holds without balancing."""
    cfg = experiment(data_dir, "data.balance_ranks=true")
    plain = experiment(data_dir)  # off by default
    tok = build_tiny_tokenizer()
    shards = [WorkerBatches(cfg, rank=r, world_size=world_size, tokenizer=tok) for r in range(world_size)]
    unbalanced = WorkerBatches(plain, rank=0, world_size=world_size, tokenizer=tok)
    total = sum(n * r for n, r in zip(shards[0].sizes, shards[0].repeats))
    assert total % (world_size * 3), "the test needs epochs that end part-way into a global batch"
    try:
        for epoch in range(4):
            orders = [s._epoch_order(epoch) for s in shards]
            assert all(o == orders[0] for o in orders)
            order = orders[0]
            assert Counter(order) == Counter(mixture_order(shards[0].sizes, shards[0].repeats, seed=0, epoch=epoch))
            plain_order = unbalanced._epoch_order(epoch)
            assert plain_order == mixture_order(shards[0].sizes, shards[0].repeats, seed=0, epoch=epoch)
            assert order != plain_order
            rows = [s._epoch_rows(epoch, 0) for s in shards]
            assert sum(len(r) for r in rows) == total
            # Position p of rank r's stream is order[(p % rows_per_epoch) * W + r]; the global
            # batch of a step is the same multiset of records with and without balancing.
            per_rank = 3
            rank0_rows = -(-total // world_size)
            offset = (-(epoch * rank0_rows)) % per_rank * world_size
            bounds = [0, offset] + list(range(offset + world_size * per_rank, total, world_size * per_rank)) + [total]
            for a, b in zip(bounds, bounds[1:]):
                assert Counter(order[a:b]) == Counter(plain_order[a:b])
    finally:
        for s in (*shards, unbalanced):
            s.close()
