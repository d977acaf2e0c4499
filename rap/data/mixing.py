"""Deterministic, resumable batch schedule for training (pre-training mix and fine-tuning).

Every batch comes from ONE source (WebVid or CC3M in pre-training; the released code also
draws a random source per step). Everything is a pure function of (seed, epoch, step, rank):

* the source of step t: ``default_rng((seed, epoch, SCHEDULE_KEY)).choice(S, steps, p=weights)[t]``
  (mixing "weighted"), or with mixing "exhaust" drawn uniformly among the sources that still
  have a full batch left this epoch, so that every sample is seen once an epoch (the release's
  MetaLoader, meta_dataloader.py:44-46); identical on every rank without any communication;
* each source's order: a seeded permutation per (seed, epoch, source, cycle), padded to a
  multiple of ``world_size`` and sharded ``rank::world_size`` (DistributedSampler-style); a
  source drawn more often than its share wraps into its next cycle; each rank keeps its slice
  of the live permutations (a small LRU per epoch), so a step costs no permutation;
* the augmentation seed of sample j of step t on rank r.

So resuming at (epoch, step) replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, Sequence

import numpy as np

SCHEDULE_KEY = 1_000_003  # keeps the schedule stream apart from the per-source permutations
MIXINGS = ("weighted", "exhaust")


# numpy's SeedSequence constants (numpy/random/bit_generator.pyx, O'Neill's seed_seq design)
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_POOL = 4
_M32 = 0xFFFFFFFF


def _words(n: int) -> list[int]:
    """``n`` as SeedSequence reads an int: little-endian 32-bit words, ``[0]`` for zero."""
    if n < 0:
        raise ValueError(f"seed entropy must be >= 0, got {n}")
    out = [n & _M32] if n == 0 else []
    while n > 0:
        out.append(n & _M32)
        n >>= 32
    return out


def sample_seeds(seed: int, epoch: int, step: int, rank: int, n: int) -> np.ndarray:
    """``SeedSequence((seed, epoch, step, j, rank)).generate_state(1)[0]`` for j in range(n),
    as uint32, computed for all j at once (64 SeedSequence objects per step cost ~0.5 ms in
    the main process; this costs ~20 us). Bit-identical to numpy's (tests/test_data_mixing.py
    compares them): the hash constants evolve independently of the data, so the rows share
    them and only the word of j differs."""
    head = _words(seed) + _words(epoch) + _words(step)
    tail = _words(rank)
    ent = np.empty((n, len(head) + 1 + len(tail)), dtype=np.uint32)
    ent[:, : len(head)] = head
    ent[:, len(head)] = np.arange(n, dtype=np.uint32)
    ent[:, len(head) + 1 :] = tail
    h = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal h
        value = value ^ np.uint32(h)
        h = (h * _MULT_A) & _M32
        value = value * np.uint32(h)
        return value ^ (value >> np.uint32(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
        return r ^ (r >> np.uint32(16))

    width = ent.shape[1]
    zeros = np.zeros(n, dtype=np.uint32)
    pool = [hashmix(ent[:, i] if i < width else zeros) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, width):
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(ent[:, src]))
    out = pool[0] ^ np.uint32(_INIT_B)
    out = out * np.uint32((_INIT_B * _MULT_B) & _M32)
    return out ^ (out >> np.uint32(16))


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
        # permutation shards of the current epoch, keyed (source, cycle): a step needs at most
        # two cycles of one source, so two per source keep every live one
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_epoch: int | None = None
        self._cache_size = 2 * len(self.sizes)
        self._sched: tuple[int, np.ndarray] | None = None
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
        """This rank's slice of the permutation of ``source`` for (epoch, cycle), computed once
        and kept in a small LRU (a full permutation of a 2.5M-clip source costs tens of ms,
        more than a paper step's budget for data when redone each step)."""
        if epoch != self._cache_epoch:  # an epoch's permutations are never used again
            self._perms.clear()
            self._cache_epoch = epoch
        key = (source, cycle)
        shard = self._perms.get(key)
        if shard is None:
            shard = self._compute_shard(epoch, source, cycle)
            self._perms[key] = shard
            if len(self._perms) > self._cache_size:
                self._perms.popitem(last=False)
        else:
            self._perms.move_to_end(key)
        return shard

    def _compute_shard(self, epoch: int, source: int, cycle: int) -> np.ndarray:
        n = self.sizes[source]
        perm = np.random.default_rng((self.seed, epoch, source, cycle)).permutation(n)
        total = self.shard_len[source] * self.world_size
        perm = np.resize(perm, total)  # wrap-around padding keeps every rank's shard equal
        # a compact copy of this rank's slice: the full permutation is freed
        return perm[self.rank :: self.world_size].astype(np.int32 if n < 2**31 else np.int64)

    def _schedule_cached(self, epoch: int) -> np.ndarray:
        if self._sched is None or self._sched[0] != epoch:
            self._sched = (epoch, self.schedule(epoch))
        return self._sched[1]

    def batch(self, epoch: int, step: int, sched: np.ndarray | None = None) -> list[tuple[int, int, int]]:
        """The ``(source, item, sample_seed)`` of each sample of ``step`` on this rank."""
        sched = self._schedule_cached(epoch) if sched is None else sched
        s = int(sched[step])
        start = int((sched[:step] == s).sum()) * self.batch_size  # this source's cursor
        L = self.shard_len[s]
        pos = start + np.arange(self.batch_size, dtype=np.int64)
        cycles = pos // L
        items = np.empty(self.batch_size, dtype=np.int64)
        for cycle in np.unique(cycles).tolist():
            sel = cycles == cycle
            items[sel] = self._shard(epoch, s, cycle)[pos[sel] % L]
        seeds = sample_seeds(self.seed, epoch, step, self.rank, self.batch_size)
        return [(s, i, seed) for i, seed in zip(items.tolist(), seeds.tolist())]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch, sched = self.epoch, self._schedule_cached(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            yield self.batch(epoch, step, sched)

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step
