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

OBJECT_MIN = 0.5

__all__ = ["OBJECT_MIN", "average_precision", "patch_separation", "roc_auc", "separation", "token_separation"]


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
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size)
    sorted_s = s[order]
    i = 0
    while i < s.size:  # average rank over each run of tied scores
        j = i
        while j + 1 < s.size and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


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
