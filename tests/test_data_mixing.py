"""The pre-training mix: identical source schedule on every rank, disjoint shards, resumable."""

from __future__ import annotations

import numpy as np
import pytest

from rap.data.mixing import MixedBatchSampler, sample_seeds

from helpers.legacy_index import old_batch


def _epoch(s: MixedBatchSampler) -> list[list[tuple[int, int, int]]]:
    return list(s)


def test_schedule_identical_across_ranks_and_shards_disjoint():
    sizes, w = [50, 30], [0.7, 0.3]
    ranks = [MixedBatchSampler(sizes, w, 4, seed=7, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_position(epoch=3)
    e0, e1 = _epoch(ranks[0]), _epoch(ranks[1])
    assert len(e0) == len(e1) == ranks[0].steps_per_epoch == (25 + 15) // 4
    for b0, b1 in zip(e0, e1):
        assert {s for s, _, _ in b0} == {s for s, _, _ in b1} and len({s for s, _, _ in b0}) == 1
    src0 = [i for b in e0 for s, i, _ in b if s == 0]
    src1 = [i for b in e1 for s, i, _ in b if s == 0]
    assert src0 and not set(src0) & set(src1)  # within a cycle the ranks' items are disjoint
    seeds = [seed for b in e0 + e1 for _, _, seed in b]
    assert len(set(seeds)) == len(seeds)  # per-sample augmentation seeds differ


def test_shards_cover_a_source_once_per_cycle():
    ranks = [MixedBatchSampler([50, 30], [1.0, 0.0], 5, seed=2, rank=r, world_size=2) for r in range(2)]
    first = [[i for b in _epoch(s) for _, i, _ in b][:25] for s in ranks]
    assert sorted(first[0] + first[1]) == list(range(50))
    odd = [MixedBatchSampler([7], [1.0], 1, seed=2, rank=r, world_size=3) for r in range(3)]
    assert {len(s) for s in odd} == {3}  # padded by wrap-around: equal steps on every rank


def test_weights_are_respected_and_epochs_differ():
    s = MixedBatchSampler([1000, 1000], [0.8, 0.2], 1, seed=0)
    frac = (s.schedule(0) == 0).mean()
    assert 0.75 < frac < 0.85
    assert not np.array_equal(s.schedule(0), s.schedule(1))
    assert np.array_equal(s.schedule(0), MixedBatchSampler([1000, 1000], [0.8, 0.2], 1, seed=0).schedule(0))


def test_resume_from_a_data_position_replays_exactly():
    full = MixedBatchSampler([23, 11], [0.5, 0.5], 3, seed=1, rank=1, world_size=3)
    full.set_position(2)
    ref = _epoch(full)
    resumed = MixedBatchSampler([23, 11], [0.5, 0.5], 3, seed=1, rank=1, world_size=3)
    resumed.set_position(2, step=4)
    assert len(resumed) == len(ref) - 4
    assert _epoch(resumed) == ref[4:]


def test_oversampled_source_wraps_into_a_new_permutation():
    s = MixedBatchSampler([4, 100], [1.0, 0.0], 2, seed=0)  # all steps from the 4-item source
    items = [i for b in _epoch(s) for _, i, _ in b]
    assert len(items) == 2 * s.steps_per_epoch == 104
    for c in range(0, 100, 4):
        assert sorted(items[c : c + 4]) == [0, 1, 2, 3]  # every cycle is a full permutation


def test_bad_arguments():
    with pytest.raises(ValueError, match="one weight per source"):
        MixedBatchSampler([3], [0.5, 0.5], 2, seed=0)
    with pytest.raises(ValueError, match="rank 2 outside"):
        MixedBatchSampler([3], [1.0], 2, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="step 99"):
        MixedBatchSampler([3], [1.0], 1, seed=0).set_position(0, 99)


@pytest.mark.parametrize(
    "seed,mixing,world,rank",
    [(0, "weighted", 1, 0), (7, "exhaust", 3, 2), (2**40 + 11, "weighted", 4, 1), (123, "exhaust", 2, 0)],
)
def test_cached_permutations_give_the_old_batches(seed, mixing, world, rank):
    sizes = [37, 101, 5]  # a source smaller than a batch wraps into new cycles within a step
    s = MixedBatchSampler(sizes, [0.5, 0.3, 0.2], 7, seed=seed, rank=rank, world_size=world, mixing=mixing)
    for epoch in (0, 3, 1):  # an epoch change clears the cache; going back recomputes
        s.set_position(epoch)
        new = list(s)
        assert new == [old_batch(s, epoch, t, s.schedule(epoch)) for t in range(s.steps_per_epoch)]
        assert s.batch(epoch, s.steps_per_epoch - 1) == new[-1]  # random access after the epoch
    s.set_position(1, step=2)
    assert list(s) == [old_batch(s, 1, t, s.schedule(1)) for t in range(2, s.steps_per_epoch)]  # exact resume


def test_permutation_cache_stays_small_and_per_epoch():
    s = MixedBatchSampler([5, 9], [0.5, 0.5], 4, seed=3)  # many cycles of both sources
    s.set_position(0)
    list(s)
    assert 0 < len(s._perms) <= 2 * len(s.sizes) and s._cache_epoch == 0
    s.batch(1, 0)
    assert s._cache_epoch == 1 and len(s._perms) <= 2


@pytest.mark.parametrize(
    "seed,epoch,step,rank", [(0, 0, 0, 0), (1, 2, 3, 5), (2**40 + 7, 3, 1000, 63), (2**64 + 5, 2**33, 0, 0)]
)
def test_vectorised_sample_seeds_equal_seedsequence(seed, epoch, step, rank):
    got = sample_seeds(seed, epoch, step, rank, 70).tolist()
    ref = [int(np.random.SeedSequence((seed, epoch, step, j, rank)).generate_state(1)[0]) for j in range(70)]
    assert got == ref
