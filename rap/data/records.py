"""Records shared by the whole data pipeline (DESIGN.md "Data").

``ClipRecord`` is what an adapter reads from a publisher's annotation files; ``IndexEntry`` is
what ``rap extract`` writes per usable clip into ``index/<dataset>.jsonl`` (the record plus
probe information and, when a frame store exists, where its frames live).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from rap.errors import RapError

Kind = Literal["video", "image"]


class DataError(RapError, RuntimeError):
    """Missing or malformed data: the message names the file, key or value."""


@dataclass(frozen=True)
class ClipRecord:
    """One video (or image, shown as a static clip) with all its captions.

    ``captions`` holds every caption the split gives this clip: fine-tuning treats them as
    positives of one another; evaluation makes each of them a text query (DiDeMo: one
    paragraph, all sentences joined).
    """

    video_id: str
    path: Path
    captions: tuple[str, ...]
    split: str
    kind: Kind = "video"


@dataclass(frozen=True)
class ProbeInfo:
    num_frames: int
    fps: float
    duration: float
    width: int
    height: int


@dataclass(frozen=True)
class IndexEntry:
    """A usable clip: record + probe + optional frame-store file (relative to the data root) and
    the sha256 of its stored bytes (the file, or the member of a tar shard): the index pins the
    frames, so that DVC hashes this one file, not the millions of the store (dvc.yaml)."""

    record: ClipRecord
    info: ProbeInfo
    store: str | None = None
    store_sha256: str | None = None

    def to_json(self, root: Path) -> dict[str, Any]:
        r = self.record
        return {
            "video_id": r.video_id,
            "path": _rel(r.path, root),
            "captions": list(r.captions),
            "split": r.split,
            "kind": r.kind,
            "num_frames": self.info.num_frames,
            "fps": self.info.fps,
            "duration": self.info.duration,
            "width": self.info.width,
            "height": self.info.height,
            "store": self.store,
            "store_sha256": self.store_sha256,
        }

    @staticmethod
    def from_json(d: dict[str, Any], root: Path) -> "IndexEntry":
        rec = ClipRecord(
            video_id=str(d["video_id"]),
            path=_abs(d["path"], root),
            captions=tuple(d["captions"]),
            split=str(d["split"]),
            kind=d["kind"],
        )
        info = ProbeInfo(int(d["num_frames"]), float(d["fps"]), float(d["duration"]), int(d["width"]), int(d["height"]))
        return IndexEntry(rec, info, d.get("store"), d.get("store_sha256"))


def _rel(path: Path, root: Path) -> str:
    """Paths in the index are relative to the data root, so a copied tree stays valid."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(Path(path).resolve())


def _abs(path: str, root: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


def index_paths(root: str | Path, dataset: str) -> tuple[Path, Path]:
    """``(index/<dataset>.jsonl, index/<dataset>.bad.jsonl)`` under the data root."""
    idx = Path(root) / "index"
    return idx / f"{dataset}.jsonl", idx / f"{dataset}.bad.jsonl"


def shard_index_path(root: str | Path, dataset: str, shard: int, shards: int) -> Path:
    """``index/<dataset>.shards/<I>-of-<N>.jsonl``: what ``rap extract DATASET --shard I/N``
    found for each of its items (rap/data/extract.py); the merge of the N makes the index."""
    return Path(root) / "index" / f"{dataset}.shards" / f"{shard}-of-{shards}.jsonl"


def read_index(root: str | Path, dataset: str, split: str | None = None) -> list[IndexEntry]:
    """Usable clips of ``dataset`` (optionally one split) as written by ``rap extract``."""
    return list(iter_index(root, dataset, split))


def iter_index(root: str | Path, dataset: str, split: str | None = None) -> Iterator[IndexEntry]:
    """:func:`read_index` one entry at a time (the loaders keep columns, not the entries)."""
    path, _ = index_paths(root, dataset)
    if not path.is_file():
        raise DataError(f"{path}: no index; run `rap extract {dataset}` first")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = IndexEntry.from_json(json.loads(line), Path(root))
            except (KeyError, ValueError, TypeError) as err:
                raise DataError(f"{path}:{n}: malformed index line ({err})") from None
            if split is None or entry.record.split == split:
                yield entry


def valid_caption(text: object) -> bool:
    """A usable caption: a non-blank str that is valid UTF-8 (files are read with
    ``errors="surrogateescape"`` so undecodable bytes survive as lone surrogates)."""
    if not isinstance(text, str) or not text.strip():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_captions(captions: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    """(usable captions stripped, number dropped)."""
    good = tuple(c.strip() for c in captions if valid_caption(c))
    return good, len(captions) - len(good)
