"""Frame transforms (DESIGN.md tensor conventions): uint8 frames in, uint8 (K, 3, H, W) out.

Every geometric step (crop, resize, flip) works on uint8 pixels and returns uint8: a sample
leaves the loader as raw pixels, a quarter of the bytes of float32 through the worker queues,
pinned memory and the host-to-device copy, and the model normalises them on the device
(:func:`rap.model.video.normalize_frames`, model.vision.pixel_mean/std). Nothing is lost by resizing
in uint8: Pillow's antialiased bilinear resize rounds to uint8 either way, and it is what the
former float path normalised too, so on the same frames the normalised input is the same as
before to float32 precision.

Pre-training takes two independently augmented views of the same sampled frames (the second
one feeds the intra-modal task of appendix A.1). Each view draws ONE random resized crop and
applies it to all K frames: a per-frame crop would make a static object appear to move.

Horizontal flip. A flip turns "moves to the left" into a video of something moving right, so
flipping silently would train on wrong captions. ``data.hflip`` is off by default; when on,
one flip decision is shared by both views and the caption's left/right words are swapped
(:func:`swap_left_right`), so text and pixels stay consistent.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from PIL import Image

from rap.data.randaugment import rand_augment

CROP_SCALE = (0.5, 1.0)  # area fraction, as ALPRO/BLIP pre-training
CROP_RATIO = (3 / 4, 4 / 3)


def _resize_box(frames: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """Crop ``box`` = (left, top, right, bottom) of every frame and resize it to ``size`` = (w, h).

    Pillow (antialiased bilinear) rather than torch ops: per-sample tensors this small run
    slower under torch's intra-op threads than single-threaded, especially in the main
    process beside a training step.
    """
    h, w = frames.shape[1:3]
    if box == (0, 0, w, h) and size == (w, h):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR, box=box)) for f in frames])


def to_tensor(frames: np.ndarray, flip: bool = False) -> torch.Tensor:
    """uint8 (K, H, W, 3) -> uint8 (K, 3, H, W), horizontally flipped with ``flip``
    (channel-first and contiguous, as the batch is stacked and pinned)."""
    x = frames[:, :, ::-1] if flip else frames
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def crop_params(
    h: int, w: int, rng: np.random.Generator, scale=CROP_SCALE, ratio=CROP_RATIO
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop (torchvision's algorithm:
    10 tries at a random area/aspect, else the centred largest crop of a legal aspect)."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        a = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(*log_r))
        cw, ch = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_r = w / h
    if in_r < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_r > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def train_view(
    frames: np.ndarray,
    size: int,
    rng: np.random.Generator,
    *,
    flip: bool = False,
    view: str = "crop",
    crop_scale: tuple[float, float] = CROP_SCALE,
    randaugment: bool = False,
) -> torch.Tensor:
    """One augmented view, the same for every frame: ``view`` "crop" (a random resized crop of
    area ``crop_scale``), "squash" (the whole frame resized to ``size`` x ``size``, the
    release's MSRVTT/DiDeMo fine-tuning), "squash_crop" (squashed, then cropped: its LSMDC) or
    "centre" (:func:`eval_view`, its MSVD); then
    RandAugment(2, 5) (:mod:`rap.data.randaugment`) and the flip."""
    if view == "squash_crop":  # the release's LSMDC: squash to size x size, then crop that
        frames, view = _resize_box(frames, (0, 0, frames.shape[2], frames.shape[1]), (size, size)), "crop"
    h, w = frames.shape[1:3]
    if view == "crop":
        top, left, ch, cw = crop_params(h, w, rng, scale=crop_scale)
        box = (left, top, left + cw, top + ch)
    elif view == "squash":
        box = (0, 0, w, h)
    elif view == "centre":
        m = min(h, w)
        box = ((w - m) / 2, (h - m) / 2, (w + m) / 2, (h + m) / 2)
    else:
        raise ValueError(f"view must be crop, squash, squash_crop or centre, got {view!r}")
    out = _resize_box(frames, box, (size, size))
    if randaugment:
        out = rand_augment(out, rng)
    return to_tensor(out, flip)


def eval_view(frames: np.ndarray, size: int) -> torch.Tensor:
    """Resize the short side to ``size``, then centre crop ``size`` x ``size`` (one step: the
    centred square of side min(H, W) is resized to ``size``)."""
    h, w = frames.shape[1:3]
    m = min(h, w)
    top, left = (h - m) / 2, (w - m) / 2
    return to_tensor(_resize_box(frames, (left, top, left + m, top + m), (size, size)))


_LR = re.compile(r"\b(left|right|leftwards|rightwards|leftward|rightward)\b", re.IGNORECASE)
_SWAP = {
    "left": "right",
    "right": "left",
    "leftwards": "rightwards",
    "rightwards": "leftwards",
    "leftward": "rightward",
    "rightward": "leftward",
}


def swap_left_right(caption: str) -> str:
    """The caption of a horizontally flipped video ("left" <-> "right", case kept)."""

    def sub(m: re.Match) -> str:
        w = m.group(0)
        out = _SWAP[w.lower()]
        return out.capitalize() if w[0].isupper() else out

    return _LR.sub(sub, caption)
