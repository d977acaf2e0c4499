"""Pre-extracted frame store: one file per clip holding its frames at ``store_fps``, short side
resized to ``image_size``, in one of two formats (``data.store_format``):

* ``npy``: uint8 (T, H, W, 3), memory-mapped on read. Fastest, but T*H*W*3 bytes per clip:
  at 2 fps, 256 px, 16:9 a 15 s clip takes ~10 MB (~25 TB for WebVid-2M); fine at 64 px.
* ``jpeg``: every frame JPEG-encoded (``store_jpeg_quality``) in one ``.jpgs`` file::

      magic b"RAPJPGS1" | uint32 T, H, W | uint64 offsets[T + 1] | frame 0 bytes | frame 1 ...

  (little endian; frame t is bytes ``offsets[t]:offsets[t + 1]`` of the file, which ends at
  ``offsets[T]``). Reading returns a :class:`JpegClip` that decodes only the frames indexed.

In tar shards (``wds``, the paper-scale default, and ``wds-npy``): at 2.5M clips one file per
clip means millions of inodes and a stat plus two opens per sample; these formats pack about
``data.wds_shard_clips`` clips (1,000) into one webdataset-style tar (member ``<id>-<hash>.jpgs``
for ``wds``, ``<id>-<hash>.npy`` for ``wds-npy``: the bytes a one-file-per-clip store would hold,
so the frames are the same uint8 values as the ``jpeg`` / ``npy`` store). A tar is written once,
complete and atomically, and never appended to. Random access needs no scan of the tar: the
index row of a clip names its member as ``<tar path>#<offset>,<length>`` (the member's data
bytes, recorded when the tar is written), so a sample is one open and one mmap/pread, the
batches stay a pure function of (seed, epoch, step, rank) and exact resume is untouched.

Why a store at all: decoding h264 is the data-loading bottleneck (a K-frame sample needs
seeking to and decoding from the previous key frame); from the store a sample is K slices (npy)
or K small JPEG decodes. benchmarks/bench_loader.py measures speed and size of both.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import struct
import tarfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from rap.atomic import atomic_write
from rap.data.records import ProbeInfo

FORMATS = {"npy": ".npy", "jpeg": ".jpgs"}  # store format -> file suffix (read/write dispatch on it)
# tar-shard formats -> the one-file format of their members
WDS_FORMATS = {"wds": "jpeg", "wds-npy": "npy"}
_MAGIC = b"RAPJPGS1"
_HEAD = struct.Struct("<8s3I")  # magic, T, H, W
_MEMBER_REF = re.compile(r"^(?P<tar>.+\.tar)#(?P<offset>\d+),(?P<length>\d+)$")


def store_relpath(
    dataset: str,
    clip_path: Path,
    video_id: str,
    image_size: int,
    store_fps: float,
    *,
    fmt: str,
    quality: int,
    source_digest: str = "",
) -> str:
    """``frames/<dataset>/<size>px-<fps>fps[-jpeg<q>]/<xx>/<id>-<hash>[-<src>].<npy|jpgs>``: keyed
    by the clip's path (ids of different splits may repeat; extract passes it relative to the data
    root, so the names do not depend on where the tree lives), by the clip file's content
    (``source_digest``: the manifest's ``sha256:<hex>`` of its bytes, rap/data/manifest.py; a
    video replaced at the same path, e.g. a regenerated corpus, never reuses the old one's
    frames) and by every store setting (changing the size, rate, format or JPEG quality never
    reuses stale frames); two-character fan-out keeps directories small at 2.5M clips."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown frame-store format {fmt!r}; expected one of {tuple(FORMATS)}")
    h = hashlib.sha1(str(clip_path).encode("utf-8", "surrogateescape")).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", video_id)[:80]
    setting = f"{image_size}px-{store_fps:g}fps" + (f"-jpeg{quality}" if fmt == "jpeg" else "")
    src = f"-{source_digest.rpartition(':')[2][:10]}" if source_digest else ""
    return f"frames/{dataset}/{setting}/{h[:2]}/{safe}-{h[:10]}{src}{FORMATS[fmt]}"


def wds_tar_relpath(
    dataset: str,
    chunk: int,
    members_digest: str,
    image_size: int,
    store_fps: float,
    *,
    fmt: str,
    quality: int,
) -> str:
    """``frames/<dataset>/<size>px-<fps>fps[-jpeg<q>]-wds/<chunk>-<hash>.tar``: the tar of chunk
    ``chunk`` (the items at manifest positions ``chunk * wds_shard_clips`` onwards, see
    rap/data/extract.py), keyed by ``members_digest`` (what the chunk holds: its items' keys and
    content digests) and by every store setting, so that no tar of other content is reused."""
    if fmt not in WDS_FORMATS:
        raise ValueError(f"not a tar-shard store format {fmt!r}; expected one of {tuple(WDS_FORMATS)}")
    member = WDS_FORMATS[fmt]
    setting = f"{image_size}px-{store_fps:g}fps" + (f"-jpeg{quality}" if member == "jpeg" else "") + "-wds"
    return f"frames/{dataset}/{setting}/{chunk:06d}-{members_digest[:10]}.tar"


def member_name(clip_path: Path, video_id: str, fmt: str) -> str:
    """A clip's member name inside a tar shard: ``<id>-<path hash>.<jpgs|npy>`` (webdataset's
    ``<key>.<ext>``; the key is unique within the tar, as the store's file names are)."""
    h = hashlib.sha1(str(clip_path).encode("utf-8", "surrogateescape")).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", video_id)[:80]
    return f"{safe}-{h[:10]}{FORMATS[WDS_FORMATS[fmt]]}"


def member_ref(tar_relpath: str, offset: int, length: int) -> str:
    """The index's name of a tar member: ``<tar>#<offset>,<length>`` (its data bytes)."""
    return f"{tar_relpath}#{offset},{length}"


def store_file(ref: str | Path) -> Path:
    """The file holding a store reference: the tar of a member reference, else the file itself."""
    m = _MEMBER_REF.match(str(ref))
    return Path(m["tar"]) if m else Path(ref)


def encode_clip(frames: np.ndarray, fmt: str, *, quality: int = 90) -> bytes:
    """The bytes of a one-file clip of format ``fmt`` (npy or jpeg): what :func:`write_clip`
    writes and what a tar shard holds as one member."""
    _check_frames(frames, f"{fmt} clip")
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(frames))
        return buf.getvalue()
    return _encode_jpegs(frames, quality)


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> dict[str, tuple[int, int]]:
    """Write ``members`` ((name, bytes), in order) as one tar, atomically; returns each member's
    (data offset, length) in the file. Reproducible bytes: no times, owners or modes of the
    writing machine (GNU format, mtime 0, uid/gid 0, mode 0644)."""
    spans: dict[str, tuple[int, int]] = {}

    def write(f) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in members:
                if name in spans:
                    raise ValueError(f"{path}: member {name!r} twice")
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
                start = f.tell()
                header = len(info.tobuf(tarfile.GNU_FORMAT, tar.encoding, tar.errors))
                tar.addfile(info, io.BytesIO(data))
                spans[name] = (start + header, len(data))

    atomic_write(path, write, fsync=False)
    return spans


def store_indices(info: ProbeInfo, store_fps: float) -> list[int]:
    """Source frame indices kept at ``store_fps`` (all frames when the video is slower)."""
    if info.num_frames <= 1 or info.fps <= store_fps:
        return list(range(info.num_frames))
    step = info.fps / store_fps
    idx = np.floor(np.arange(0, info.num_frames, step)).astype(int)
    return sorted(set(np.clip(idx, 0, info.num_frames - 1).tolist()))


def _format(path: Path) -> str:
    for fmt, suffix in FORMATS.items():
        if path.suffix == suffix:
            return fmt
    raise ValueError(f"{path}: not a frame-store file (suffix must be one of {tuple(FORMATS.values())})")


def _encode_jpegs(frames: np.ndarray, quality: int) -> bytes:
    """Header + offset table + the concatenated JPEG frames (module docstring)."""
    blobs = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
        blobs.append(buf.getvalue())
    t, h, w = frames.shape[:3]
    start = _HEAD.size + 8 * (t + 1)
    offsets = start + np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype("<u8")
    return _HEAD.pack(_MAGIC, t, h, w) + offsets.tobytes() + b"".join(blobs)


def _check_frames(frames: np.ndarray, what: object) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"{what}: frames must be uint8 (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")


def write_clip(path: Path, frames: np.ndarray, *, quality: int = 90) -> int:
    """Write uint8 (T, H, W, 3) ``frames`` in the format of ``path``'s suffix (``FORMATS``);
    atomically (:func:`rap.atomic.atomic_write`): a killed extract never leaves a torn file.
    Returns the file's size in bytes."""
    _check_frames(frames, path)
    atomic_write(path, encode_clip(frames, _format(path), quality=quality), fsync=False)
    return path.stat().st_size


def _decode_jpeg(data: bytes) -> np.ndarray:
    """One JPEG frame -> uint8 (H, W, 3) (a module function so tests can count decodes)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


class JpegClip:
    """A ``.jpgs`` clip that indexes like the memory-mapped (T, H, W, 3) array: ``clip[i]``,
    ``clip[[i, j, ...]]`` or ``clip[a:b]`` returns uint8 frames, decoding only those (each
    distinct index once). A frame that does not decode raises ValueError naming the file."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, path: Path, shape: tuple[int, int, int, int], offsets: np.ndarray, base: int = 0):
        # base: where the clip starts in the file (a member of a tar shard); offsets are the clip's own
        self.path, self.shape, self.offsets, self.base = path, shape, offsets, base

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(key, slice):
            return self._frames(range(*key.indices(len(self))))
        if isinstance(key, (int, np.integer)):
            return self._frames([key])[0]
        return self._frames(np.asarray(key, dtype=np.int64).tolist())

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _frames(self, idx: Sequence[int]) -> np.ndarray:
        t = len(self)
        idx = [i + t if i < 0 else i for i in idx]
        if any(not 0 <= i < t for i in idx):
            raise IndexError(f"{self.path}: frame index out of range for {t} frames: {list(idx)}")
        decoded = {}
        with self.path.open("rb") as f:
            for i in sorted(set(idx)):
                f.seek(self.base + int(self.offsets[i]))
                data = f.read(int(self.offsets[i + 1] - self.offsets[i]))
                try:
                    frame = _decode_jpeg(data)
                except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for bad image data
                    raise ValueError(f"{self.path}: frame {i} does not decode: {err}") from None
                if frame.shape != self.shape[1:]:
                    raise ValueError(f"{self.path}: frame {i} decodes to {frame.shape}, header says {self.shape[1:]}")
                decoded[i] = frame
        return np.stack([decoded[i] for i in idx]) if idx else np.empty((0, *self.shape[1:]), np.uint8)


def _open_jpegs(path: Path, base: int = 0, size: int | None = None, opened: BinaryIO | None = None) -> JpegClip:
    """Parse and check the header and offset table (no frame is decoded) of the clip that fills
    ``path`` or, in a tar shard, its ``size`` bytes from ``base`` (``opened``: ``path`` already
    open, read from without opening it again)."""
    size = path.stat().st_size if size is None else size
    with contextlib.nullcontext(opened) if opened else path.open("rb") as f:
        f.seek(base)
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size or head[:8] != _MAGIC:
            raise ValueError(f"{path}: not a JPEG frame-store clip (bad header)")
        _, t, h, w = _HEAD.unpack(head)
        if t < 1 or h < 1 or w < 1:
            raise ValueError(f"{path}: bad JPEG frame-store header (T, H, W) = {(t, h, w)}")
        table = f.read(8 * (t + 1))
    if len(table) < 8 * (t + 1):
        raise ValueError(f"{path}: truncated JPEG frame-store clip (offset table)")
    offsets = np.frombuffer(table, dtype="<u8")
    if offsets[0] != _HEAD.size + len(table) or np.any(np.diff(offsets.astype(np.int64)) <= 0):
        raise ValueError(f"{path}: corrupt JPEG frame-store offset table")
    if offsets[-1] != size:
        raise ValueError(f"{path}: truncated or torn JPEG frame-store clip ({size} bytes, expected {offsets[-1]})")
    return JpegClip(path, (t, h, w, 3), offsets, base)


def _read_npy(path: Path, base: int = 0, size: int | None = None, opened: BinaryIO | None = None) -> np.ndarray:
    """The memory-mapped array of a ``.npy`` file or, in a tar shard, of the member at ``base``
    (``opened``: ``path`` already open, mapped without opening it again)."""
    if base == 0 and size is None:
        arr = np.load(path, mmap_mode="r")
    else:
        with contextlib.nullcontext(opened) if opened else path.open("rb") as f:
            f.seek(base)
            try:
                version = np.lib.format.read_magic(f)
                fmt = np.lib.format
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
            except ValueError as err:
                raise ValueError(f"{path}: no npy member at byte {base}: {err}") from None
            header = f.tell() - base
            if fortran or header + int(np.prod(shape)) * dtype.itemsize != size:
                raise ValueError(f"{path}: npy member at byte {base} does not fill its {size} bytes")
            arr = np.memmap(f, dtype=dtype, mode="r", offset=base + header, shape=shape)  # the mapping outlives f
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"{path}: not a frame-store clip (dtype {arr.dtype}, shape {arr.shape})")
    return arr


_READERS: dict[str, Callable[..., np.ndarray | JpegClip]] = {"npy": _read_npy, "jpeg": _open_jpegs}


def read_clip(path: Path) -> np.ndarray | JpegClip:
    """(T, H, W, 3) uint8 frames of a store file or tar member (``<tar>#<offset>,<length>``),
    read lazily: a memory-mapped array (npy) or a :class:`JpegClip` (jpeg); only the frames
    indexed later are read (and decoded)."""
    m = _MEMBER_REF.match(str(path))
    if m is None:
        return _READERS[_format(path)](path)
    tar, offset, length = Path(m["tar"]), int(m["offset"]), int(m["length"])
    with tar.open("rb") as f:  # one open: the member's format from its first bytes, then its header
        f.seek(offset)
        fmt = "jpeg" if f.read(len(_MAGIC)) == _MAGIC else "npy"
        return _READERS[fmt](tar, offset, length, f)


def is_complete(path: Path) -> bool:
    """A store file that exists and parses (lets an interrupted extract resume; a torn or
    corrupt file is re-extracted). For jpeg, every frame must also start with the JPEG SOI and
    end with the EOI marker: catches damaged files without decoding (cheap at 2.5M clips)."""
    try:
        clip = read_clip(path)
        if isinstance(clip, JpegClip):
            with path.open("rb") as f:
                for a, b in zip(clip.offsets[:-1], clip.offsets[1:]):
                    f.seek(int(a))
                    soi = f.read(2)
                    f.seek(int(b) - 2)
                    if soi != b"\xff\xd8" or f.read(2) != b"\xff\xd9":
                        return False
        return True
    except (OSError, ValueError):
        return False
