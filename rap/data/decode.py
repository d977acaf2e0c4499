"""Video/image decoding and probing: decord first (fast seeking, resize on decode), PyAV as
fallback (decord lacks wheels on some platforms and rejects some containers).

Every failure is raised as :class:`DecodeError` naming the file, so callers can skip the clip
and report it instead of crashing mid-epoch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from rap.data.records import ProbeInfo

log = logging.getLogger(__name__)

try:  # decord has no wheels for aarch64/macOS arm64: PyAV then does all the work
    import decord

    decord.logging.set_level(decord.logging.QUIET)
except ImportError:  # pragma: no cover - depends on the platform
    decord = None

import av  # noqa: E402  (kept after the optional decord import: both bundle FFmpeg libraries)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


class DecodeError(RuntimeError):
    """A file that cannot be read as a video or image (message names the file and why)."""


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def resized_shape(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(w, h) with the short side scaled to ``short_side`` (aspect kept; even sizes)."""
    if not short_side:
        return width, height
    s = short_side / min(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DecodeError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise DecodeError(f"{path}: zero-byte file")


# ---------------------------------------------------------------------------------------
# Probing
# ---------------------------------------------------------------------------------------


def probe(path: str | Path, *, verify: bool = True) -> ProbeInfo:
    """Frame count, fps, duration, width, height of a video (an image: 1 frame, fps 1).

    ``verify`` also decodes the last frame: a truncated file often has an intact header but
    no decodable tail, and would otherwise fail only later, in the middle of training.
    """
    path = Path(path)
    _check_file(path)
    if is_image(path):
        w, h = _image_size(path)
        return ProbeInfo(num_frames=1, fps=1.0, duration=0.0, width=w, height=h)
    errors = []
    if decord is not None:
        try:
            return _probe_decord(path, verify)
        except Exception as err:  # decord raises its own DECORDError and plain RuntimeErrors
            errors.append(f"decord: {err}".splitlines()[0])
    try:
        return _probe_av(path, verify)
    except Exception as err:
        errors.append(f"av: {err}".splitlines()[0])
    raise DecodeError(f"{path}: unreadable video ({'; '.join(errors)})")


def _probe_decord(path: Path, verify: bool) -> ProbeInfo:
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    if n < 1:
        raise DecodeError("no frames")
    fps = float(vr.get_avg_fps()) or 1.0
    first = vr[0].shape  # (H, W, 3)
    if verify:
        vr.get_batch([n - 1]).asnumpy()
    return ProbeInfo(num_frames=n, fps=fps, duration=n / fps, width=int(first[1]), height=int(first[0]))


def _probe_av(path: Path, verify: bool) -> ProbeInfo:
    with av.open(str(path)) as c:
        if not c.streams.video:
            raise DecodeError("no video stream")
        s = c.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or 1.0)
        if verify or not s.frames:
            n = sum(1 for _ in c.decode(s))  # counting decodes every frame: the verification
        else:
            n = int(s.frames)
        w, h = s.codec_context.width, s.codec_context.height
    if n < 1:
        raise DecodeError("no decodable frames")
    return ProbeInfo(num_frames=n, fps=fps, duration=n / fps, width=w, height=h)


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DecodeError(f"{path}: unreadable image ({err})") from None


# ---------------------------------------------------------------------------------------
# Reading frames
# ---------------------------------------------------------------------------------------


def read_image(path: str | Path, short_side: int | None = None) -> np.ndarray:
    """An image as one frame: uint8 (1, H, W, 3)."""
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if short_side:
                im = im.resize(resized_shape(*im.size, short_side), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)[None]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DecodeError(f"{path}: unreadable image ({err})") from None


def read_frames(
    path: str | Path, indices: Sequence[int], short_side: int | None = None, src_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Frames ``indices`` of a video as uint8 (len(indices), H, W, 3), resized on decode so the
    short side is ``short_side``. An image returns its one frame repeated (a static clip).
    ``src_size`` = (width, height) from the index saves decord a second open to learn it."""
    path = Path(path)
    if is_image(path):
        return np.repeat(read_image(path, short_side), len(indices), axis=0)
    _check_file(path)
    errors = []
    if decord is not None:
        try:
            return _read_decord(path, indices, short_side, src_size)
        except Exception as err:
            errors.append(f"decord: {err}".splitlines()[0])
    try:
        return _read_av(path, indices, short_side)
    except Exception as err:
        errors.append(f"av: {err}".splitlines()[0])
    raise DecodeError(f"{path}: cannot decode frames {list(indices)[:8]} ({'; '.join(errors)})")


def _read_decord(
    path: Path, indices: Sequence[int], short_side: int | None, src_size: tuple[int, int] | None
) -> np.ndarray:
    kw = {}
    if short_side:
        if src_size is None:
            probe_vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            h, w = probe_vr[0].shape[:2]
            del probe_vr
        else:
            w, h = src_size
        kw["width"], kw["height"] = resized_shape(w, h, short_side)
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, **kw)
    n = len(vr)
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise DecodeError(f"frame indices {bad} outside [0, {n})")
    return vr.get_batch(list(indices)).asnumpy()


def _read_av(path: Path, indices: Sequence[int], short_side: int | None) -> np.ndarray:
    """Sequential decode up to the last wanted frame (clips are short; no seeking needed)."""
    wanted = sorted(set(int(i) for i in indices))
    got: dict[int, np.ndarray] = {}
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        size = None
        for i, frame in enumerate(c.decode(s)):
            if i > wanted[-1]:
                break
            if i in wanted:
                if short_side and size is None:
                    size = resized_shape(frame.width, frame.height, short_side)
                if size:
                    frame = frame.reformat(width=size[0], height=size[1])
                got[i] = frame.to_ndarray(format="rgb24")
    missing = [i for i in wanted if i not in got]
    if missing:
        raise DecodeError(f"frames {missing[:8]} not decodable ({len(got)} decoded)")
    return np.stack([got[int(i)] for i in indices])
