"""Sparse frame sampling (paper 5.4: K frames per clip; released code: ``headtail``).

All modes split the clip into K parts and take one index per part, so a clip shorter than K
frames repeats frames spread over the whole clip (e.g. 2 frames, K=4 -> 0,0,1,1) instead of
the released code's all-zero indices.
"""

from __future__ import annotations

import numpy as np

MODES = ("rand", "uniform", "headtail")


def _segments(lo: int, hi: int, k: int) -> np.ndarray:
    """K+1 float boundaries splitting [lo, hi) into K equal segments."""
    return np.linspace(lo, hi, k + 1)


def _rand_in_segments(lo: int, hi: int, k: int, rng: np.random.Generator) -> list[int]:
    b = _segments(lo, hi, k)
    u = rng.random(k)
    idx = np.floor(b[:-1] + u * (b[1:] - b[:-1])).astype(int)
    return np.clip(idx, lo, hi - 1).tolist()


def sample_indices(num_frames: int, k: int, mode: str, rng: np.random.Generator | None = None) -> list[int]:
    """K frame indices (non-decreasing) into a clip of ``num_frames`` frames.

    * ``rand``: one random frame from each of K equal segments (training).
    * ``uniform``: the centre of each segment (evaluation; deterministic, ``rng`` unused).
    * ``headtail``: ceil(K/2) frames from the first half and floor(K/2) from the second, drawn
      without replacement and sorted, as the released code does (2 + 2 for K = 4).
    """
    if num_frames < 1:
        raise ValueError(f"sample_indices: num_frames must be >= 1, got {num_frames}")
    if k < 1:
        raise ValueError(f"sample_indices: k must be >= 1, got {k}")
    if mode == "uniform":
        b = _segments(0, num_frames, k)
        return np.clip(np.floor((b[:-1] + b[1:]) / 2).astype(int), 0, num_frames - 1).tolist()
    if mode not in MODES:
        raise ValueError(f"sample_indices: unknown mode {mode!r}; expected one of {MODES}")
    if rng is None:
        raise ValueError(f"sample_indices: mode {mode!r} needs an rng")
    if mode == "rand":
        return _rand_in_segments(0, num_frames, k, rng)
    # headtail
    if k == 1 or num_frames == 1:
        return _rand_in_segments(0, num_frames, k, rng)
    mid = num_frames // 2
    out: list[int] = []
    for lo, hi, n in ((0, mid, (k + 1) // 2), (mid, num_frames, k // 2)):
        if hi - lo >= n:
            out += sorted(rng.choice(np.arange(lo, hi), size=n, replace=False).tolist())
        else:  # half shorter than its share: spread repeats over that half
            out += _rand_in_segments(lo, hi, n, rng)
    return out
