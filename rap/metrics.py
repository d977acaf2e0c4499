"""Text-video retrieval metrics: R@1, R@5, R@10, median and mean rank (paper section 5.1).

``sim[i, j]`` scores query ``i`` against candidate ``j`` (higher = more similar). The rank of
a query is the 1-based position of its first correct candidate when the candidates are
sorted by decreasing score; R@K is the percentage of queries with rank <= K, MdR and MnR are
the median and mean rank.

Tie policy (pessimistic). A query's rank is

    rank_i = 1 + #{ j not correct for i : sim[i, j] >= max_{g correct for i} sim[i, g] }

i.e. every *wrong* candidate that scores at least as high as the best correct one is counted
in front of it. Ties between a correct and a wrong candidate therefore never help a model: a
constant similarity matrix (a collapsed model) ranks every single-target query last
(R@1 = 0, MdR = N), below the chance level R@1 = 100/N, instead of the perfect score that
"optimistic" tie handling (rank = 1 + number of strictly higher wrong candidates) gives it.
Peer code differs here: CLIP4Clip's ``compute_metrics`` locates the correct entry with
``np.where(sorted_row - correct_score == 0)``, which returns one hit per tied position, so a
row with ties is counted several times and the recall denominator stops being the number of
queries (its issue #80); Frozen-in-Time breaks ties optimistically for t2v.
The pessimistic rank is the worst case of random tie-breaking, so it can only understate a
model whose scores are tied; with continuous scores from a trained model ties are
(measure-theoretically) absent and every policy agrees. Ties among *correct* candidates do
not matter: whichever of them comes first, the query is found at that position.

Several correct candidates per query (MSVD video-to-text: every caption of the video is
correct) use the best-ranked one, as in the literature.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["RECALL_KS", "retrieval_ranks", "retrieval_metrics", "t2v_v2t_metrics", "recall_intervals"]

RECALL_KS = (1, 5, 10)
# Bootstrap over queries (percentile method): how far R@K could move on another draw of test
# queries of the same size. Seeded: the interval of a given ranking is reproducible.
CI_LEVEL = 0.95
CI_RESAMPLES = 2000
CI_SEED = 0


def _as_matrix(sim: Any) -> np.ndarray:
    """2-D float64 numpy copy of a torch tensor / numpy array / nested list."""
    if isinstance(sim, torch.Tensor):
        # float64 keeps float64 scores (the ITM re-rank) apart: a float32 cast would merge
        # near-equal scores into ties, counted against the model. bfloat16/float16 have no or
        # an odd numpy dtype; widening them (and float32) to float64 is exact, so no new ties.
        sim = sim.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(sim)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"similarity matrix must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"similarity matrix must be 2-D (queries, candidates), got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"similarity matrix is empty: shape {tuple(arr.shape)}")
    arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        bad = np.argwhere(np.isnan(arr))[0]
        # NaN compares false with everything, which would silently rank such a query first.
        raise ValueError(f"similarity matrix holds NaN (first at query {bad[0]}, candidate {bad[1]})")
    return arr


def _gt_mask(gt: Any, num_queries: int, num_candidates: int) -> np.ndarray:
    """Boolean ``(Q, C)`` matrix of correct candidates from any accepted ``gt`` format."""
    shape = (num_queries, num_candidates)
    if gt is None:
        if num_queries != num_candidates:
            raise ValueError(
                f"gt=None means the diagonal and needs a square similarity matrix, got {shape}; "
                "pass gt (one candidate index per query, lists of indices, or a boolean matrix)"
            )
        return np.eye(num_queries, dtype=bool)
    if isinstance(gt, torch.Tensor):
        gt = gt.detach().cpu().numpy()
    if isinstance(gt, np.ndarray):
        if gt.dtype == bool:
            if gt.shape != shape:
                raise ValueError(f"boolean gt matrix has shape {gt.shape}, similarity matrix has {shape}")
            mask = gt.copy()
        elif np.issubdtype(gt.dtype, np.integer):
            if gt.ndim != 1 or gt.shape[0] != num_queries:
                raise ValueError(
                    f"integer gt must be 1-D with one candidate index per query "
                    f"(length {num_queries}), got shape {gt.shape}"
                )
            _check_indices(gt, num_candidates, "gt")
            mask = np.zeros(shape, dtype=bool)
            mask[np.arange(num_queries), gt] = True
        else:
            raise ValueError(f"gt array must be integer indices or a boolean matrix, got dtype {gt.dtype}")
    elif isinstance(gt, Sequence) and not isinstance(gt, (str, bytes)):
        if len(gt) != num_queries:
            raise ValueError(f"gt has {len(gt)} entries but the similarity matrix has {num_queries} queries")
        mask = np.zeros(shape, dtype=bool)
        for i, entry in enumerate(gt):
            idx = np.atleast_1d(np.asarray(entry))
            if idx.size == 0:
                continue  # reported below as a query without a correct candidate
            if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or idx.dtype == bool:
                raise ValueError(f"gt[{i}] = {entry!r}: expected a candidate index or a list of indices")
            _check_indices(idx, num_candidates, f"gt[{i}]")
            mask[i, idx] = True
    else:
        raise ValueError(
            f"unsupported gt of type {type(gt).__name__}: pass None, an index per query, "
            "a list of index lists, or a boolean (queries, candidates) matrix"
        )
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"query {empty[0]} has no correct candidate ({empty.size} such queries)")
    return mask


def _check_indices(idx: np.ndarray, num_candidates: int, what: str) -> None:
    if idx.size and (idx.min() < 0 or idx.max() >= num_candidates):
        raise ValueError(
            f"{what} holds candidate index out of range [0, {num_candidates}): min {idx.min()}, max {idx.max()}"
        )


def retrieval_ranks(sim: Any, gt: Any = None) -> np.ndarray:
    """1-based rank of each query's best correct candidate, ties counted pessimistically.

    ``sim``: ``(Q, C)`` scores (torch or numpy). ``gt``: None (the diagonal, square ``sim``),
    an integer index per query ``(Q,)``, a list of per-query index lists, or a boolean
    ``(Q, C)`` matrix. Returns an int64 array ``(Q,)``; see the module docstring for the
    tie policy.
    """
    scores = _as_matrix(sim)
    mask = _gt_mask(gt, *scores.shape)
    best_correct = np.where(mask, scores, -np.inf).max(axis=1, keepdims=True)
    ahead = (scores >= best_correct) & ~mask
    return 1 + ahead.sum(axis=1).astype(np.int64)


def retrieval_metrics(sim: Any, gt: Any = None) -> dict[str, float]:
    """``{"R@1", "R@5", "R@10", "MdR", "MnR"}`` of a similarity matrix (recalls in percent).

    Arguments as in :func:`retrieval_ranks`. Floats throughout, ready for JSON and MLflow.
    """
    ranks = retrieval_ranks(sim, gt)
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_KS}
    out["MdR"] = float(np.median(ranks))
    out["MnR"] = float(np.mean(ranks))
    return out


def t2v_v2t_metrics(
    sim_t2v: Any, text_to_video: Any, sim_v2t: Any = None, *, with_intervals: bool = False
) -> dict[str, dict[str, Any]]:
    """Both retrieval directions of a text-video benchmark.

    ``sim_t2v``: ``(T, V)`` text-to-video scores; ``text_to_video``: ``(T,)`` index of each
    text's video (several texts may share one video, as in MSVD; DiDeMo paragraph queries are
    one text per video). ``sim_v2t``: ``(V, T)`` video-to-text scores when they differ from
    ``sim_t2v.T`` (ITM re-ranking re-scores each direction's own top k).

    Text-to-video: each text has exactly its video as the correct candidate. Video-to-text:
    each video's correct candidates are *all* its texts; it is found at the best-ranked one.
    Every video needs at least one text. ``with_intervals`` adds ``"ci95"``: the bootstrap
    intervals of each direction's recalls (:func:`recall_intervals`).
    """
    t2v = _as_matrix(sim_t2v)
    num_texts, num_videos = t2v.shape
    if isinstance(text_to_video, torch.Tensor):
        text_to_video = text_to_video.detach().cpu().numpy()
    index = np.asarray(text_to_video)
    if index.shape != (num_texts,) or not np.issubdtype(index.dtype, np.integer) or index.dtype == bool:
        raise ValueError(
            f"text_to_video must be an integer array of shape ({num_texts},), "
            f"got shape {index.shape} dtype {index.dtype}"
        )
    _check_indices(index, num_videos, "text_to_video")
    v2t = t2v.T if sim_v2t is None else _as_matrix(sim_v2t)
    if v2t.shape != (num_videos, num_texts):
        raise ValueError(f"sim_v2t must have shape {(num_videos, num_texts)}, got {v2t.shape}")
    v2t_mask = index[None, :] == np.arange(num_videos)[:, None]  # (V, T): texts of each video
    missing = np.flatnonzero(~v2t_mask.any(axis=1))
    if missing.size:
        raise ValueError(f"video {missing[0]} has no text in text_to_video ({missing.size} such videos)")
    metrics = {"t2v": retrieval_metrics(t2v, index), "v2t": retrieval_metrics(v2t, v2t_mask)}
    if with_intervals:
        metrics["ci95"] = {
            "t2v": recall_intervals(retrieval_ranks(t2v, index)),
            "v2t": recall_intervals(retrieval_ranks(v2t, v2t_mask)),
        }
    return metrics


def recall_intervals(
    ranks: np.ndarray, *, resamples: int = CI_RESAMPLES, seed: int = CI_SEED, level: float = CI_LEVEL
) -> dict[str, float]:
    """95 % bootstrap intervals of R@1/5/10 over queries: ``{"R@1_lo", "R@1_hi", ...}`` in
    percent. Queries are resampled with replacement ``resamples`` times (seeded), and the
    interval is the central ``level`` of the resampled recalls (percentile method)."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"recall_intervals needs a non-empty 1-D array of ranks, got shape {ranks.shape}")
    draws = np.random.default_rng(seed).integers(0, ranks.size, size=(resamples, ranks.size))
    resampled = ranks[draws]  # (resamples, queries)
    tail = 100.0 * (1.0 - level) / 2.0
    out: dict[str, float] = {}
    for k in RECALL_KS:
        recalls = 100.0 * (resampled <= k).mean(axis=1)
        lo, hi = np.percentile(recalls, [tail, 100.0 - tail])
        out[f"R@{k}_lo"], out[f"R@{k}_hi"] = float(lo), float(hi)
    return out
