"""Does a redundancy weight find the redundancy? ROC-AUC and average precision of weights
against the embedded corpus's ground truth (:mod:`rap.data.ground_truth`).

RaCL's weight w = 1 - redundancy (paper eqs. 4-6 for patches, 7-8 for tokens) should be high on
what the other modality names and low on the rest. Scored as a ranking: positives are the patches
a captioned object covers (coverage >= ``OBJECT_MIN``) and the tokens of words the frames show;
negatives are the patches nothing captioned touches (clutter, background: coverage 0) and the
tokens of redundant phrases. Boundary patches (0 < coverage < ``OBJECT_MIN``) and unlabelled
tokens ("a", "the", ...) are left out. AUC 0.5 is chance; 1 ranks every positive above every
negative.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rap.data.ground_truth import REDUNDANT_PHRASE, SHOWN
from rap.metrics import CI_LEVEL, CI_RESAMPLES, CI_SEED

OBJECT_MIN = 0.5

__all__ = [
    "OBJECT_MIN",
    "average_precision",
    "pair_bootstrap_auc",
    "patch_separation",
    "roc_auc",
    "separation",
    "token_separation",
]


def _checked(scores: Sequence[float], labels: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {y.size}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    if y.all() or not y.any():
        raise ValueError(f"need positives and negatives, got {int(y.sum())} positive of {y.size}")
    return s, y


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2
    (Mann-Whitney U / (n_pos * n_neg), from average ranks)."""
    s, y = _checked(scores, labels)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # average rank of each tied group: its last rank minus half of its extra members
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pair_bootstrap_auc(
    scores: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    resamples: int = CI_RESAMPLES,
    seed: int = CI_SEED,
    level: float = CI_LEVEL,
) -> tuple[float, float]:
    """95 % bootstrap interval of the pooled ROC-AUC over queries: the pairs (one array of
    scores and labels per query and its video) are resampled with replacement ``resamples``
    times (seeded, as the recall intervals of :func:`rap.metrics.recall_intervals`); a pair
    drawn c times weighs c. Percentile method."""
    _checked(np.concatenate([np.ravel(a) for a in scores]), np.concatenate([np.ravel(a) for a in labels]))
    n = len(scores)
    pos = [np.asarray(a, np.float64)[np.asarray(b, bool)] for a, b in zip(scores, labels)]
    neg = [np.sort(np.asarray(a, np.float64)[~np.asarray(b, bool)]) for a, b in zip(scores, labels)]
    # wins[p, q]: Mann-Whitney count of pair p's positives over pair q's negatives (ties 1/2);
    # a draw with pair counts c has U = c' wins c, n_pos = c.P, n_neg = c.N
    all_pos = np.concatenate(pos)
    owner = np.repeat(np.arange(n), [len(a) for a in pos])
    wins = np.zeros((n, n))
    for q, negatives in enumerate(neg):
        below = np.searchsorted(negatives, all_pos, side="left")
        tied = np.searchsorted(negatives, all_pos, side="right") - below
        wins[:, q] = np.bincount(owner, weights=below + tied / 2, minlength=n)
    n_pos_of = np.array([len(a) for a in pos], np.float64)
    n_neg_of = np.array([len(a) for a in neg], np.float64)
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.einsum("rp,pq,rq->r", counts, wins, counts) / ((counts @ n_pos_of) * (counts @ n_neg_of))
    values = values[np.isfinite(values)]  # a draw with one class only has no AUC
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def average_precision(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Sum over distinct score thresholds (high to low) of (recall gained) x (precision there):
    AP = sum_k (R_k - R_{k-1}) P_k, a tied group entering at once (as scikit-learn's)."""
    s, y = _checked(scores, labels)
    thresholds = np.unique(s)[::-1]
    n_pos = int(y.sum())
    ap, prev_recall = 0.0, 0.0
    for t in thresholds:
        taken = s >= t
        tp = int((taken & y).sum())
        recall, precision = tp / n_pos, tp / int(taken.sum())
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return float(ap)


def separation(weights: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> dict[str, float]:
    """ROC-AUC, AP and counts of ``weights`` at ranking the ``positive`` entries above the
    ``negative`` ones (boolean masks of the same shape; entries in neither are left out)."""
    weights, positive, negative = (np.asarray(a).ravel() for a in (weights, positive, negative))
    keep = positive | negative
    s, y = weights[keep], positive[keep]
    return {
        "auc": roc_auc(s, y),
        "ap": average_precision(s, y),
        "positives": int(y.sum()),
        "negatives": int((~y).sum()),
    }


def patch_separation(weights: np.ndarray, coverage: np.ndarray, *, object_min: float = OBJECT_MIN) -> dict[str, float]:
    """ROC-AUC and AP of patch ``weights`` (any shape, e.g. (G, G) for the frame-averaged grid)
    at separating object patches (``coverage >= object_min``) from untouched ones (0)."""
    w, c = np.asarray(weights, np.float64), np.asarray(coverage, np.float64)
    if w.shape != c.shape:
        raise ValueError(f"patch weights {w.shape} and coverage {c.shape} differ in shape")
    return separation(w, c >= object_min, c == 0)


def token_separation(weights: Sequence[float], labels: Sequence[str | None]) -> dict[str, float]:
    """ROC-AUC and AP of token ``weights`` at separating shown words from redundant phrases
    (``labels`` from :func:`rap.data.ground_truth.token_labels`; None tokens left out)."""
    w = np.asarray(weights, np.float64).ravel()
    if w.size != len(labels):
        raise ValueError(f"{w.size} token weights for {len(labels)} labels")
    lab = np.asarray([str(x) for x in labels])
    return separation(w, lab == SHOWN, lab == REDUNDANT_PHRASE)
