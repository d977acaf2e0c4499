"""RandAugment as the release applies it to CC3M images in pre-training (caskcsg/VLP,
RaP/data/__init__.py:14: ``RandomAugment(2, 5, augs=[Identity, AutoContrast, Brightness,
Sharpness, Equalize, ShearX, ShearY, TranslateX, TranslateY, Rotate])``, the BLIP transform in
RaP/transform/randaugment.py), written with Pillow on uint8 frames.

Two ops are drawn with replacement; each is applied with probability 1/2 at level 5 of 10:
Brightness / Sharpness factor 5/10 * 1.8 + 0.1 = 1.0 (identity, as in the release), shear
+-0.15, translation +-5 px, rotation +-15 degrees, the uncovered area filled with grey 128.
One draw per clip, applied to all its K frames (a CC3M clip is one image repeated).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

OPS = (
    "Identity",
    "AutoContrast",
    "Brightness",
    "Sharpness",
    "Equalize",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
)
N_OPS, LEVEL, MAX_LEVEL = 2, 5, 10
PROB = 0.5
FILL = (128, 128, 128)
TRANSLATE_CONST = 10.0  # pixels at MAX_LEVEL


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() > 0.5 else value


def _op(name: str, rng: np.random.Generator) -> Callable[[Image.Image], Image.Image]:
    """The PIL function of op ``name`` with its random sign drawn now (shared by the frames)."""
    frac = LEVEL / MAX_LEVEL
    if name == "Identity":
        return lambda im: im
    if name == "AutoContrast":
        return ImageOps.autocontrast
    if name == "Equalize":
        return ImageOps.equalize
    if name in ("Brightness", "Sharpness"):
        enhancer = ImageEnhance.Brightness if name == "Brightness" else ImageEnhance.Sharpness
        factor = frac * 1.8 + 0.1
        return lambda im: enhancer(im).enhance(factor)
    if name in ("ShearX", "ShearY"):
        s = _signed(frac * 0.3, rng)
        coeffs = (1, s, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, s, 1, 0)
        return lambda im: im.transform(im.size, Image.AFFINE, coeffs, Image.BILINEAR, fillcolor=FILL)
    if name in ("TranslateX", "TranslateY"):
        d = _signed(frac * TRANSLATE_CONST, rng)
        coeffs = (1, 0, -d, 0, 1, 0) if name == "TranslateX" else (1, 0, 0, 0, 1, -d)
        return lambda im: im.transform(im.size, Image.AFFINE, coeffs, Image.BILINEAR, fillcolor=FILL)
    if name == "Rotate":
        deg = frac * 30.0
        deg = -deg if rng.random() < 0.5 else deg
        return lambda im: im.rotate(deg, Image.BILINEAR, fillcolor=FILL)
    raise ValueError(f"unknown RandAugment op {name!r}; expected one of {OPS}")


def rand_augment(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (K, H, W, 3) -> uint8 (K, H, W, 3): RandAugment(2, 5) drawn once for the clip."""
    chosen = [OPS[int(i)] for i in rng.integers(len(OPS), size=N_OPS)]
    ops = [_op(name, rng) for name in chosen if rng.random() <= PROB]
    if not ops:
        return frames
    out = []
    for f in frames:
        im = Image.fromarray(f)
        for op in ops:
            im = op(im)
        out.append(np.asarray(im))
    return np.stack(out)
