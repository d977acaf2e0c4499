"""The embedded corpus's ground truth (``raw/<dataset>/ground_truth.jsonl``, written by
:mod:`rap.data.synthetic`) mapped onto what a model sees: patch positions and text tokens.

The sidecar is resolution-free (shapes in source pixels, caption spans in characters), because
the patch grid depends on the evaluation's ``image_size`` and ``patch_size`` and on which frames
are sampled. This module reproduces the evaluation pipeline's geometry (docs/DESIGN.md,
"Ground truth of the embedded corpus"):

* frames: the store keeps source frames ``store_indices(info, store_fps)``; evaluation samples
  ``sample_indices(len(kept), K, "uniform")`` of those (:func:`eval_source_frames`);
* pixels: ``eval_view`` resizes the centred square of side min(W, H) to ``image_size``, so
  patch (row i, col j) of a G x G grid (G = image_size / patch_size) covers the source square
  ``[left + j*m/G, left + (j+1)*m/G) x [top + i*m/G, ...)`` with m = min(W, H),
  left = (W - m)/2, top = (H - m)/2;
* coverage: the fraction of that square inside a captioned shape (the "object" and "second"
  roles, minus what is painted over them later), measured on ``SUPERSAMPLE`` x ``SUPERSAMPLE``
  points per patch with the generator's own shape test.

Pixel conventions (issue 20). The resize (PIL's box filter) treats source pixel k as the area
[k, k + 1), centre k + 0.5 (``CENTRE``). The painter, :func:`rap.data.synthetic.render`, tests a
shape at the integer coordinate k of pixel k (``PAINTER``): in the resize's coordinates the
painted shape sits half a pixel right and down of its recorded centre. Coverage follows the
painter by default (a point u of the continuous square is tested at u - 0.5); ``CENTRE`` is the
earlier reading, kept by name so the two can be compared (tests/test_ground_truth.py: against
the decoded frames the painter's convention mismatches fewer pixels).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rap.data.records import ProbeInfo
from rap.data.sampling import sample_indices
from rap.data.store import store_indices
from rap.data.synthetic import GROUND_TRUTH, REDUNDANT_PHRASE, SHOWN, _mask

CAPTIONED = ("object", "second")  # roles a caption names; "clutter" and the background are not
SUPERSAMPLE = 8
PAINTER = "painter"  # pixel k is the point k (synthetic.render's shape test): the default
CENTRE = "centre"  # pixel k is the area [k, k + 1) tested at its centre k + 0.5
CONVENTIONS = (PAINTER, CENTRE)


def truth_index_path(root: str | Path, dataset: str) -> Path:
    """``index/<dataset>.truth.jsonl``: the ground truth of the indexed clips, written by ``rap
    extract`` beside the index (empty when the corpus has none: the public datasets)."""
    return Path(root) / "index" / f"{dataset}.truth.jsonl"


def load_ground_truth(path: str | Path) -> dict[str, dict]:
    """Ground-truth lines by video path (relative to ``raw/<dataset>``), from a sidecar file or
    from a dataset's raw directory (``raw/<dataset>/ground_truth.jsonl``)."""
    path = Path(path)
    if path.is_dir():
        path = path / GROUND_TRUTH
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no ground truth (only the embedded corpus has one; regenerate it with `rap download`)"
        )
    out = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                entry = json.loads(line)
                out[entry["video"]] = entry
            except (json.JSONDecodeError, KeyError) as err:
                raise ValueError(f"{path}:{n}: not a ground-truth line ({err})") from None
    return out


def indexed_truth_lines(raw_dir: str | Path, videos: set[str]) -> list[str]:
    """The sidecar's lines (verbatim) of the clips in ``videos`` (paths relative to
    ``raw_dir``), in sidecar order; none when the directory has no sidecar."""
    path = Path(raw_dir) / GROUND_TRUTH
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [line for line in f if json.loads(line)["video"] in videos]


def eval_source_frames(entry: dict, *, frames: int, store_fps: float) -> list[int]:
    """Source frame indices the evaluation shows for this clip (``frames`` = K, uniform)."""
    n = len(entry["frames"])
    if entry["fps"] is None:  # an image: every sampled frame is frame 0
        return [0] * frames
    kept = store_indices(
        ProbeInfo(n, float(entry["fps"]), n / entry["fps"], entry["width"], entry["height"]), store_fps
    )
    return [kept[i] for i in sample_indices(len(kept), frames, "uniform")]


def _patch_points(entry: dict, grid: int, convention: str = PAINTER) -> tuple[np.ndarray, np.ndarray]:
    """Source-pixel (x, y) of SUPERSAMPLE^2 points per patch, shaped (G, G, S*S), in the
    coordinates of the shape test under ``convention`` (module docstring)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown pixel convention {convention!r}; expected one of {CONVENTIONS}")
    w, h = entry["width"], entry["height"]
    m = min(w, h)
    step = m / (grid * SUPERSAMPLE)
    shift = -0.5 if convention == PAINTER else 0.0
    centres = (np.arange(grid * SUPERSAMPLE) + 0.5) * step + shift
    xs = (w - m) / 2 + centres
    ys = (h - m) / 2 + centres
    yy, xx = np.meshgrid(ys, xs, indexing="ij")  # (G*S, G*S)

    def per_patch(a: np.ndarray) -> np.ndarray:
        return a.reshape(grid, SUPERSAMPLE, grid, SUPERSAMPLE).transpose(0, 2, 1, 3).reshape(grid, grid, -1)

    return per_patch(xx), per_patch(yy)


def frame_coverage(entry: dict, frame: int, grid: int, *, convention: str = PAINTER) -> dict[str, np.ndarray]:
    """(G, G) fractions of each patch showing a captioned shape (``"captioned"``) and clutter
    (``"clutter"``) on source frame ``frame``; the rest is background."""
    xx, yy = _patch_points(entry, grid, convention)
    owner = np.full(xx.shape, "", dtype=object)  # last painter wins, as in render()
    for role, shape, cx, cy, r in entry["frames"][frame]:
        owner[_mask(shape, xx, yy, cx, cy, r)] = role
    captioned = np.isin(owner, CAPTIONED).mean(-1)
    return {"captioned": captioned, "clutter": (owner == "clutter").mean(-1)}


def patch_coverage(
    entry: dict, *, image_size: int, patch_size: int, frames: int, store_fps: float, convention: str = PAINTER
) -> dict[str, np.ndarray]:
    """Captioned-object coverage per patch of the evaluated view: ``per_frame`` (K, G, G) for
    the K sampled frames and ``averaged`` (G, G), their mean -- the grid of the frame-averaged
    patch tokens RaCL weighs (paper eq. 4); ``clutter`` (G, G) likewise averaged."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    grid = image_size // patch_size
    covs = [
        frame_coverage(entry, t, grid, convention=convention)
        for t in eval_source_frames(entry, frames=frames, store_fps=store_fps)
    ]
    per_frame = np.stack([c["captioned"] for c in covs])
    return {
        "per_frame": per_frame,
        "averaged": per_frame.mean(0),
        "clutter": np.stack([c["clutter"] for c in covs]).mean(0),
    }


def token_labels(caption: dict, offsets: list[tuple[int, int]]) -> list[str | None]:
    """Label per token (``shown``, ``redundant`` or None) from a tokenizer's character
    ``offsets`` into ``caption["text"]`` (special tokens have (0, 0): None). A token belongs to
    the span that contains its first character."""
    labels: list[str | None] = []
    for start, end in offsets:
        label = None
        if end > start:
            for a, b, kind in caption["spans"]:
                if a <= start < b:
                    label = kind
                    break
        labels.append(label)
    return labels


__all__ = [
    "CAPTIONED",
    "CENTRE",
    "CONVENTIONS",
    "PAINTER",
    "REDUNDANT_PHRASE",
    "SHOWN",
    "SUPERSAMPLE",
    "eval_source_frames",
    "indexed_truth_lines",
    "frame_coverage",
    "load_ground_truth",
    "patch_coverage",
    "token_labels",
    "truth_index_path",
]
