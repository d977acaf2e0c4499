"""Deterministic, resumable batch schedule for training (pre-training mix and fine-tuning).

Every batch comes from ONE source (WebVid or CC3M in pre-training; the released code also
draws a random source per step). Everything is a pure function of (seed, epoch, step, rank):

* the source of step t: ``default_rng((seed, epoch, SCHEDULE_KEY)).choice(S, steps, p=weights)[t]``
  (mixing "weighted"), or with mixing "exhaust" drawn uniformly among the sources that still
  have a full batch left this epoch, so that every sample is seen once an epoch (the release's
  MetaLoader, meta_dataloader.py:44-46); identical on every rank without any communication;
* each source's order: a seeded permutation per (seed, epoch, source, cycle), padded to a
  multiple of ``world_size`` and sharded ``rank::world_size`` (DistributedSampler-style); a
  source drawn more often than its share wraps into its next cycle;
* the augmentation seed of sample j of step t on rank r.

So resuming at (epoch, step) replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

SCHEDULE_KEY = 1_000_003  # keeps the schedule stream apart from the per-source permutations
MIXINGS = ("weighted", "exhaust")


def exhaust_schedule(source_steps: Sequence[int], rng: np.random.Generator, steps: int) -> np.ndarray:
    """Source of each of ``steps`` steps: uniform among the sources with batches left, until
    each source s has had ``source_steps[s]`` (the release's MetaLoader: ``random.choice`` over
    the loaders not yet exhausted). A source smaller than one batch still gets one step."""
    left = [max(n, 0) for n in source_steps]
    if not any(left):
        left = [1] * len(source_steps)
    out = np.empty(steps, dtype=np.int64)
    for t in range(steps):
        open_ = [s for s, n in enumerate(left) if n > 0] or list(range(len(left)))
        s = open_[int(rng.integers(len(open_)))]
        left[s] -= 1
        out[t] = s
    return out


class MixedBatchSampler:
    """Yields lists of ``(source, item, sample_seed)`` for a ``DataLoader(batch_sampler=...)``."""

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        mixing: str = "weighted",
    ):
        if len(sizes) != len(weights) or not sizes:
            raise ValueError(f"need one weight per source, got sizes={list(sizes)} weights={list(weights)}")
        if any(n < 1 for n in sizes):
            raise ValueError(f"every source needs at least one item, got sizes={list(sizes)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"source weights must be >= 0 with a positive sum, got {list(weights)}")
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
        self.sizes, self.p, self.mixing = list(sizes), w / w.sum(), mixing
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch, self.start_step = 0, 0
        # per-rank shard length: ceil(n / world) (padding by wrap-around, as DistributedSampler)
        self.shard_len = [-(-n // world_size) for n in self.sizes]
        # exhaust: each source's full batches once (its last partial batch dropped, as the
        # release's drop_last loaders); weighted: the same number of samples as all sources hold
        self.source_steps = [n // batch_size for n in self.shard_len]
        if mixing == "exhaust":
            self.steps_per_epoch = max(1, sum(self.source_steps))
        else:
            self.steps_per_epoch = max(1, sum(self.shard_len) // batch_size)

    def set_position(self, epoch: int, step: int = 0) -> None:
        if not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"step {step} outside [0, {self.steps_per_epoch}] steps per epoch")
        self.epoch, self.start_step = epoch, step

    def schedule(self, epoch: int) -> np.ndarray:
        """Source of every step of ``epoch`` (the same array on every rank)."""
        rng = np.random.default_rng((self.seed, epoch, SCHEDULE_KEY))
        if self.mixing == "weighted":
            return rng.choice(len(self.sizes), size=self.steps_per_epoch, p=self.p)
        return exhaust_schedule(self.source_steps, rng, self.steps_per_epoch)

    def _shard(self, epoch: int, source: int, cycle: int) -> np.ndarray:
        n = self.sizes[source]
        perm = np.random.default_rng((self.seed, epoch, source, cycle)).permutation(n)
        total = self.shard_len[source] * self.world_size
        perm = np.resize(perm, total)  # wrap-around padding keeps every rank's shard equal
        return perm[self.rank :: self.world_size]

    def batch(self, epoch: int, step: int, sched: np.ndarray | None = None) -> list[tuple[int, int, int]]:
        sched = self.schedule(epoch) if sched is None else sched
        s = int(sched[step])
        start = int((sched[:step] == s).sum()) * self.batch_size  # this source's cursor
        L = self.shard_len[s]
        out, cache = [], {}
        for j in range(self.batch_size):
            pos = start + j
            cycle = pos // L
            if cycle not in cache:
                cache[cycle] = self._shard(epoch, s, cycle)
            sample_seed = int(np.random.SeedSequence((self.seed, epoch, step, j, self.rank)).generate_state(1)[0])
            out.append((s, int(cache[cycle][pos % L]), sample_seed))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch, sched = self.epoch, self.schedule(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            yield self.batch(epoch, step, sched)

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step
