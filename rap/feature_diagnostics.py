"""What the local features of a checkpoint look like (issue 20): the measurements behind the
redundancy finding, logged with every evaluation (``diagnostics`` in the metrics JSON + MLflow).

Per caption and its own video, on the L2-normalised features RaCL weighs (eqs. 4-8):

* ``token_collapse``: the mean pairwise cosine of the caption's non-[CLS] token features
  ([SEP] included, as in the loss); 1 = every token points the same way, so eq. (5)'s
  redundancy cannot tell words apart;
* ``patch_collapse``: the same over the video's valid patch positions, and ``patch_spread`` =
  1 - |mean of the unit patch vectors| (0 = all patches parallel);
* alignment with the caption's mean token direction u = normalise(mean of its token features):
  the mean cosine cos(P_n, u) over all valid patches (``patch_token_alignment``) and, where the
  data has a ground truth (:mod:`rap.data.ground_truth`), over background patches (coverage 0,
  ``background_token_alignment``) and over object patches (coverage >= ``OBJECT_MIN``,
  ``object_token_alignment``). A background that aligns with u more than the object gets the
  lower redundancy weight ranking the paper's Figure 3 would call wrong.

Each value is the mean over pairs (videos for the patch measures); ``pairs``/``videos`` count them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rap.redundancy_metrics import OBJECT_MIN

__all__ = ["FeatureDiagnostics", "mean_pairwise_cosine", "spread"]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mean_pairwise_cosine(features: np.ndarray) -> float | None:
    """Mean cosine over the n(n-1) ordered pairs i != j of the rows of ``features`` (n, D);
    None for fewer than two rows. From |sum of unit rows|^2 = n + sum_{i != j} cos_ij."""
    u = _unit(features)
    n = len(u)
    if n < 2:
        return None
    total = float(np.square(u.sum(0)).sum())
    return (total - n) / (n * (n - 1))


def spread(features: np.ndarray) -> float | None:
    """1 - |mean of the unit rows| (circular variance): 0 when all rows are parallel."""
    u = _unit(features)
    return None if len(u) == 0 else 1.0 - float(np.linalg.norm(u.mean(0)))


class FeatureDiagnostics:
    """Accumulates the module's measurements pair by pair; :meth:`summary` averages them."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.videos = 0
        self.pairs = 0

    def _add(self, key: str, value: float | None) -> None:
        if value is not None and np.isfinite(value):
            self.values.setdefault(key, []).append(float(value))

    def add_video(self, patches: np.ndarray, valid: np.ndarray) -> None:
        """One video's (N, D) patch features and (N,) validity (MAC: positions never shown)."""
        p = np.asarray(patches)[np.asarray(valid, bool)]
        self.videos += 1
        self._add("patch_collapse", mean_pairwise_cosine(p))
        self._add("patch_spread", spread(p))

    def add_pair(
        self,
        patches: np.ndarray,
        patch_valid: np.ndarray,
        tokens: np.ndarray,
        token_valid: np.ndarray,
        coverage: np.ndarray | None = None,
    ) -> None:
        """One caption's (L, D) token features with its video's (N, D) patches; ``coverage``
        (N,): the ground truth's captioned-object coverage of each patch position, if any."""
        t = np.asarray(tokens)[np.asarray(token_valid, bool)]
        if len(t) == 0:
            return
        self.pairs += 1
        self._add("token_collapse", mean_pairwise_cosine(t))
        direction = _unit(_unit(t).mean(0))
        valid = np.asarray(patch_valid, bool)
        alignment = _unit(patches) @ direction
        self._add("patch_token_alignment", float(alignment[valid].mean()) if valid.any() else None)
        if coverage is not None:
            for key, where in (
                ("background_token_alignment", (np.asarray(coverage) == 0) & valid),
                ("object_token_alignment", (np.asarray(coverage) >= OBJECT_MIN) & valid),
            ):
                self._add(key, float(alignment[where].mean()) if where.any() else None)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: float(np.mean(v)) for key, v in sorted(self.values.items())}
        out["videos"] = self.videos
        out["pairs"] = self.pairs
        return out
