"""The clip index in columnar arrays: constant host memory at the paper scale (issue 17).

One Python object per clip (a ``Clip`` with its record, probe info and two ``Path``) costs
~1.4 kB per clip: 8.3 GB per rank for the 5.8M clips of WebVid-2.5M + CC3M, and a forked
DataLoader worker copies most of it, because reading an object writes its reference count and a
full garbage collection writes every tracked object's header. :class:`ClipIndex` holds the same
clips in a few numpy arrays (strings as one UTF-8 buffer + offsets; directories interned), so
its memory is the bytes of the data, and a forked worker shares it: the arrays' buffers are
never written, and there are a dozen objects to count, not millions.

A :class:`Clip` is built on demand by ``index[i]`` (identical to the one the list held), so
code that reads clips one at a time is unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from rap.data.records import ClipRecord, ProbeInfo

KINDS = ("video", "image")  # kind code -> ClipRecord.kind
# Strings are stored as UTF-8 with lone surrogates passed through: lossless for any str, so the
# undecodable bytes of a file name (surrogateescape) or caption survive as they were.
_ERRORS = "surrogatepass"


@dataclass(frozen=True)
class Clip:
    """A clip as the loaders see it: record, probe info (None: probe on first use) and the
    absolute store file (None: decode on the fly)."""

    record: ClipRecord
    info: ProbeInfo | None = None
    store: Path | None = None


class StringColumn:
    """Strings ``i`` = ``data[offsets[i]:offsets[i + 1]]`` decoded (one buffer, no objects)."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data, self.offsets = data, offsets

    @staticmethod
    def build(strings: Iterable[str]) -> "StringColumn":
        b = _StringsBuilder()
        for s in strings:
            b.append(s)
        return b.finish()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8", _ERRORS)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.offsets.nbytes


class _StringsBuilder:
    """Appends strings to one bytearray and their end offsets to a compact int64 array."""

    def __init__(self) -> None:
        self.buf, self.ends = bytearray(), array("q", [0])

    def append(self, s: str) -> None:
        self.buf += s.encode("utf-8", _ERRORS)
        self.ends.append(len(self.buf))

    def finish(self) -> StringColumn:
        data = np.frombuffer(bytes(self.buf), dtype=np.uint8)
        self.buf = bytearray()
        return StringColumn(data, _compact(np.frombuffer(self.ends, dtype=np.int64)))


def _compact(a: np.ndarray, signed: bool = False) -> np.ndarray:
    """``a`` in the smallest integer type that holds it: offsets uint32 below 4 GiB, small
    numbers (image sizes, a frame count of 1) int16."""
    kinds = (np.int16, np.int32, np.int64) if signed else (np.uint32, np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for t in kinds:
        if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max:
            return a.astype(t)
    raise ValueError(f"integers outside int64: {lo}..{hi}")


class FloatColumn:
    """float64 values, stored as codes into their distinct values when there are few (a
    video's fps takes a handful of values at 2.5M clips; an image's duration one).
    Distinct means distinct bits, so -0.0, 0.0 and every NaN come back as they were."""

    def __init__(self, values: np.ndarray, codes: np.ndarray | None):
        self.values, self.codes = values, codes

    @staticmethod
    def build(a: np.ndarray) -> "FloatColumn":
        bits, codes = np.unique(a.view(np.uint64), return_inverse=True)
        if len(bits) <= 1 << 16:
            codes = codes.astype(np.uint8 if len(bits) <= 1 << 8 else np.uint16)
            return FloatColumn(bits.view(np.float64), codes.reshape(-1))
        return FloatColumn(a.copy(), None)

    def __getitem__(self, i: int) -> float:
        return float(self.values[i] if self.codes is None else self.values[self.codes[i]])

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + (0 if self.codes is None else self.codes.nbytes)


def _stem(name: str) -> str:
    """The file name without its last suffix (the video id of most corpora's files)."""
    dot = name.rfind(".")
    return name[:dot] if dot > 0 else name


class _PathsBuilder:
    """Paths as (interned directory, file name): at 2.5M clips the directories repeat, the
    names do not. ``None`` is directory -1."""

    def __init__(self) -> None:
        self.dir_ids: dict[str, int] = {}
        self.dirs = array("q")
        self.names = _StringsBuilder()

    def append(self, path: Path | None) -> None:
        if path is None:
            self.dirs.append(-1)
            self.names.append("")
            return
        s = str(path)
        cut = s.rfind(os.sep) + 1
        self.dirs.append(self.dir_ids.setdefault(s[:cut], len(self.dir_ids)))
        self.names.append(s[cut:])

    def finish(self) -> "PathColumn":
        dirs = StringColumn.build(self.dir_ids)  # insertion order = id
        ids = _compact(np.frombuffer(self.dirs, dtype=np.int64), signed=True)
        return PathColumn(dirs, ids, self.names.finish())


class PathColumn:
    """Path ``i`` = ``dirs[dir_id[i]] + names[i]`` (None where ``dir_id[i]`` is -1)."""

    def __init__(self, dirs: StringColumn, dir_id: np.ndarray, names: StringColumn):
        self.dirs, self.dir_id, self.names = dirs, dir_id, names

    def __getitem__(self, i: int) -> Path | None:
        d = int(self.dir_id[i])
        return None if d < 0 else Path(self.dirs[d] + self.names[i])

    @property
    def nbytes(self) -> int:
        return self.dirs.nbytes + self.dir_id.nbytes + self.names.nbytes


class ClipIndex:
    """The clips of one split as columns; ``index[i]`` is the :class:`Clip` a list would hold.

    Columns: ``video_id`` (None: every id is its file name's stem, as in WebVid, CC3M and
    MSR-VTT), ``path``, ``store`` (:class:`PathColumn`), ``captions`` (all captions, clip i's
    are ``cap_offsets[i]:cap_offsets[i + 1]``; ``cap_offsets`` None: one caption per clip),
    ``split`` codes into ``splits``, ``kind`` codes into :data:`KINDS`, and the probe fields
    (``num_frames`` -1: no probe info, the clip is probed when first read).
    """

    def __init__(self, columns: dict[str, object], splits: tuple[str, ...]):
        self.n = int(columns["n"])
        self.video_id: StringColumn | None = columns["video_id"]
        self.path: PathColumn = columns["path"]
        self.store: PathColumn = columns["store"]
        self.captions: StringColumn = columns["captions"]
        self.cap_offsets: np.ndarray | None = columns["cap_offsets"]
        self.split_code: np.ndarray = columns["split"]
        self.kind_code: np.ndarray = columns["kind"]
        self.num_frames: np.ndarray = columns["num_frames"]
        self.fps: FloatColumn = columns["fps"]
        self.duration: FloatColumn = columns["duration"]
        self.width: np.ndarray = columns["width"]
        self.height: np.ndarray = columns["height"]
        self.splits = splits

    @staticmethod
    def from_clips(clips: Iterable[Clip]) -> "ClipIndex":
        b = ClipIndexBuilder()
        for c in clips:
            b.append(c.record, c.info, c.store)
        return b.finish()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Clip:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"clip {i} outside an index of {n}")
        i = int(i) % n
        rec = ClipRecord(
            _stem(self.path.names[i]) if self.video_id is None else self.video_id[i],
            self.path[i],
            self.clip_captions(i),
            self.splits[self.split_code[i]],
            KINDS[self.kind_code[i]],
        )
        return Clip(rec, self.info(i), self.store[i])

    def __iter__(self) -> Iterator[Clip]:
        return (self[i] for i in range(len(self)))

    def clip_captions(self, i: int) -> tuple[str, ...]:
        if self.cap_offsets is None:
            return (self.captions[i],)
        caps = self.captions
        return tuple(caps[j] for j in range(int(self.cap_offsets[i]), int(self.cap_offsets[i + 1])))

    def num_captions(self) -> np.ndarray:
        """Captions per clip, (N,) int64."""
        if self.cap_offsets is None:
            return np.ones(self.n, dtype=np.int64)
        return np.diff(self.cap_offsets.astype(np.int64))

    def info(self, i: int) -> ProbeInfo | None:
        k = int(self.num_frames[i])
        if k < 0:
            return None
        return ProbeInfo(k, self.fps[i], self.duration[i], int(self.width[i]), int(self.height[i]))

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (what a rank and its forked workers share)."""
        parts = (self.video_id, self.path, self.store, self.captions, self.fps, self.duration, self.cap_offsets)
        arrays = (self.split_code, self.kind_code, self.num_frames, self.width, self.height)
        return sum(p.nbytes for p in parts if p is not None) + sum(a.nbytes for a in arrays)


class ClipIndexBuilder:
    """Appends clips one at a time into compact buffers (no per-clip objects are kept), then
    :meth:`finish` freezes them into a :class:`ClipIndex` (and empties the builder)."""

    def __init__(self) -> None:
        self.video_id, self.captions = _StringsBuilder(), _StringsBuilder()
        self.path, self.store = _PathsBuilder(), _PathsBuilder()
        self.cap_ends = array("q", [0])
        self.split_ids: dict[str, int] = {}
        self.split, self.kind = array("B"), array("B")
        self.num_frames, self.width, self.height = array("q"), array("q"), array("q")
        self.fps, self.duration = array("d"), array("d")
        self.ids_are_stems = True  # until a clip's id differs from its file name's stem
        self.one_caption = True

    def append(self, record: ClipRecord, info: ProbeInfo | None, store: Path | None) -> None:
        if record.kind not in KINDS:
            raise ValueError(f"{record.path}: kind {record.kind!r} is not one of {KINDS}")
        self.video_id.append(record.video_id)
        if self.ids_are_stems:
            path = str(record.path)
            self.ids_are_stems = _stem(path[path.rfind(os.sep) + 1 :]) == record.video_id
        self.one_caption &= len(record.captions) == 1
        self.path.append(record.path)
        self.store.append(store)
        for c in record.captions:
            self.captions.append(c)
        self.cap_ends.append(self.cap_ends[-1] + len(record.captions))
        self.split.append(self.split_ids.setdefault(record.split, len(self.split_ids)))
        self.kind.append(KINDS.index(record.kind))
        if info is None:
            info = ProbeInfo(-1, 0.0, 0.0, 0, 0)
        elif info.num_frames < 0:
            raise ValueError(f"{record.path}: negative frame count {info.num_frames}")
        self.num_frames.append(info.num_frames)
        self.fps.append(info.fps)
        self.duration.append(info.duration)
        self.width.append(info.width)
        self.height.append(info.height)

    def finish(self) -> ClipIndex:
        if len(self.split_ids) > 255:
            raise ValueError(f"{len(self.split_ids)} splits in one index; at most 255")

        def ints(a: array) -> np.ndarray:
            return _compact(np.frombuffer(a, dtype=np.int64), signed=True)

        n = len(self.cap_ends) - 1
        columns = {
            "n": n,
            "video_id": None if self.ids_are_stems and n else self.video_id.finish(),
            "path": self.path.finish(),
            "store": self.store.finish(),
            "captions": self.captions.finish(),
            "cap_offsets": None if self.one_caption else _compact(np.frombuffer(self.cap_ends, dtype=np.int64)),
            "split": np.frombuffer(self.split, dtype=np.uint8).copy(),
            "kind": np.frombuffer(self.kind, dtype=np.uint8).copy(),
            "num_frames": ints(self.num_frames),
            "fps": FloatColumn.build(np.frombuffer(self.fps, dtype=np.float64)),
            "duration": FloatColumn.build(np.frombuffer(self.duration, dtype=np.float64)),
            "width": ints(self.width),
            "height": ints(self.height),
        }
        index = ClipIndex(columns, tuple(self.split_ids))
        self.__init__()  # the growth buffers go now (the builder starts over), then the heap
        _return_free_heap()
        return index


def _return_free_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Reading millions of index lines leaves freed parser objects and outgrown buffers in the
    middle of the heap, below the columns, where glibc keeps them resident: measured at
    200k WebVid-like clips, ~330 B/clip of RSS for ~145 B/clip of columns, without this."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)
