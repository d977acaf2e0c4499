"""Pre-extracted frame store: one uint8 ``.npy`` (T, H, W, 3) per clip, memory-mapped on read.

Why: decoding h264 is the data-loading bottleneck (a K-frame sample needs seeking to and
decoding from the previous key frame). Frames sampled at ``store_fps`` with the short side
resized to ``image_size`` turn a sample into K memory-mapped slices: see
benchmarks/bench_loader.py for the measured speed-up. Size: T*H*W*3 bytes per clip (at 2 fps,
256 px short side, 16:9, a 15 s clip takes ~10 MB; at the embedded scale ~0.3 MB).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from rap.data.records import ProbeInfo


def store_relpath(dataset: str, clip_path: Path, video_id: str, image_size: int, store_fps: float) -> str:
    """``frames/<dataset>/<size>px-<fps>fps/<xx>/<id>-<hash>.npy``: keyed by the clip's path
    (ids of different splits may repeat) and by the store settings (changing them never reuses
    stale frames); two-character fan-out keeps directories small at 2.5M clips."""
    h = hashlib.sha1(str(clip_path).encode("utf-8", "surrogateescape")).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", video_id)[:80]
    return f"frames/{dataset}/{image_size}px-{store_fps:g}fps/{h[:2]}/{safe}-{h[:10]}.npy"


def store_indices(info: ProbeInfo, store_fps: float) -> list[int]:
    """Source frame indices kept at ``store_fps`` (all frames when the video is slower)."""
    if info.num_frames <= 1 or info.fps <= store_fps:
        return list(range(info.num_frames))
    step = info.fps / store_fps
    idx = np.floor(np.arange(0, info.num_frames, step)).astype(int)
    return sorted(set(np.clip(idx, 0, info.num_frames - 1).tolist()))


def write_clip(path: Path, frames: np.ndarray) -> int:
    """Atomic write (temp file + os.replace): a killed extract never leaves a torn file."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.save(f, np.ascontiguousarray(frames))
    os.replace(tmp, path)
    return path.stat().st_size


def read_clip(path: Path) -> np.ndarray:
    """Memory-mapped (T, H, W, 3) uint8: only the frames indexed later are read from disk."""
    arr = np.load(path, mmap_mode="r")
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"{path}: not a frame-store clip (dtype {arr.dtype}, shape {arr.shape})")
    return arr


def is_complete(path: Path) -> bool:
    """A store file that exists and parses (lets an interrupted extract resume)."""
    try:
        read_clip(path)
        return True
    except (OSError, ValueError):
        return False
