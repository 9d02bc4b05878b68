"""EpochSampler: the order is a permutation fixed by (seed, epoch); length grouping; no shuffle."""

from __future__ import annotations

import random

import pytest

from hftl.data.samplers import EpochSampler


def _order(sampler: EpochSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_order_depends_only_on_seed_and_epoch() -> None:
    first, second = EpochSampler(100, seed=3), EpochSampler(100, seed=3)
    _order(first, 5)  # a sampler's history does not matter, only the epoch it is set to
    assert _order(first, 1) == _order(second, 1)
    assert _order(first, 0) == _order(EpochSampler(100, seed=3), 0)
    assert _order(EpochSampler(100, seed=4), 1) != _order(second, 1)


def test_order_is_a_permutation_that_changes_each_epoch() -> None:
    sampler = EpochSampler(257, seed=0)
    orders = [_order(sampler, epoch) for epoch in range(3)]
    for order in orders:
        assert sorted(order) == list(range(257))
        assert order != list(range(257))
    assert len({tuple(order) for order in orders}) == 3
    assert len(sampler) == 257


def test_no_shuffle_keeps_dataset_order() -> None:
    sampler = EpochSampler(10, seed=1, shuffle=False, lengths=list(range(10)), batch_size=2)
    assert _order(sampler, 0) == list(range(10))
    assert _order(sampler, 3) == list(range(10))


@pytest.mark.parametrize("batch_size", [2, 4])
def test_length_grouping_sorts_each_mega_batch(batch_size: int) -> None:
    rng = random.Random(0)
    num = 50 * batch_size * 3 + 7  # three full mega-batches and a short tail
    lengths = [rng.randint(1, 500) for _ in range(num)]
    sampler = EpochSampler(num, seed=2, lengths=lengths, batch_size=batch_size)
    plain = _order(EpochSampler(num, seed=2), 1)
    grouped = _order(sampler, 1)
    assert sorted(grouped) == list(range(num))
    mega = 50 * batch_size
    for start in range(0, num, mega):
        chunk = grouped[start : start + mega]
        assert [lengths[i] for i in chunk] == sorted((lengths[i] for i in chunk), reverse=True)
        # the same examples as the shuffled mega-batch, only re-ordered: grouping never crosses mega-batches
        assert set(chunk) == set(plain[start : start + mega])
    assert grouped != sorted(range(num), key=lambda i: -lengths[i])  # still shuffled across mega-batches
    assert _order(sampler, 2) != grouped
    assert _order(sampler, 1) == grouped


def test_length_grouping_puts_similar_lengths_in_a_batch() -> None:
    # two length clusters: after grouping, almost every batch is pure
    lengths = [5] * 200 + [100] * 200
    sampler = EpochSampler(400, seed=0, lengths=lengths, batch_size=8)
    order = _order(sampler, 0)
    batches = [order[i : i + 8] for i in range(0, 400, 8)]
    mixed = sum(len({lengths[i] for i in batch}) > 1 for batch in batches)
    assert mixed <= 1  # 400 / 400-per-mega-batch = 1 mega-batch: at most one batch straddles the boundary
