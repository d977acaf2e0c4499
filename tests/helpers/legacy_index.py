"""References kept from main before the columnar index (issue 17, part 4), shared by the tests
that check the new code against them and by benchmarks/bench_index_memory.py, which measures
both: the batch sampler's old schedule and a forked worker's private memory."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Callable

import numpy as np


def old_batch(s, epoch: int, step: int, sched: np.ndarray) -> list[tuple[int, int, int]]:
    """``MixedBatchSampler.batch`` as main computed it: a full permutation of the source every
    step and one SeedSequence per sample; ``sched`` is ``s.schedule(epoch)``."""
    src = int(sched[step])
    start = int((sched[:step] == src).sum()) * s.batch_size
    L = s.shard_len[src]
    out, cache = [], {}
    for j in range(s.batch_size):
        pos = start + j
        cycle = pos // L
        if cycle not in cache:
            perm = np.random.default_rng((s.seed, epoch, src, cycle)).permutation(s.sizes[src])
            cache[cycle] = np.resize(perm, L * s.world_size)[s.rank :: s.world_size]
        seed = int(np.random.SeedSequence((s.seed, epoch, step, j, s.rank)).generate_state(1)[0])
        out.append((src, int(cache[cycle][pos % L]), seed))
    return out


def private_dirty_kb(pid: int) -> int:
    """Private_Dirty (kB) of process ``pid`` (Linux /proc smaps_rollup)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/smaps_rollup: no Private_Dirty")


def forked_private_kb(touch: Callable[[], object]) -> tuple[int, str]:
    """Private memory (kB) of a forked child after ``touch()`` and a full gc, and ``str`` of what
    ``touch`` returned (the interpreter's own objects are included: compare children of the same
    process)."""
    gc.collect()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            result = str(touch())
            gc.collect()
            os.write(w, f"{private_dirty_kb(os.getpid())} {result}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        kb, _, result = f.read().partition(" ")
    os.waitpid(pid, 0)
    return int(kb), result
