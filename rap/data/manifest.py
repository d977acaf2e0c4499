"""The manifest: what of a dataset arrived, the one input of ``rap extract``.

``rap download`` (fetched, or generated at the embedded scale) and ``rap import`` (a copy the
user already holds) end by writing ``<data.root>/manifest/<dataset>.jsonl``; it is the DVC
dependency of extraction, and extraction reads its clips through :func:`manifest_records`.

Format: JSON Lines, UTF-8, one object per media file that arrived and passed the download's
check (it decoded), in the order of the published list (CSV/TSV row order, annotation order):

============  ============  ==============================================================
column        type          meaning
============  ============  ==============================================================
``key``       str           the item's id: WebVid ``videoid``, CC3M row number (9 digits),
                            the video id of the annotation files for the other datasets
``path``      str           POSIX path relative to ``data.root`` (``raw/webvid/videos/...``);
                            for an imported webdataset shard: the ``.tar`` file
``member``    str | null    the member of that tar holding the media (else null)
``caption``   str | null    the published caption of a web item (WebVid, CC3M); null where
                            captions live in the annotation files (adapters.py reads them)
``digest``    str           ``sha256:<hex>`` of the media bytes
``bytes``     int           size of the media in bytes
``kind``      str           ``video`` or ``image``
============  ============  ==============================================================

A media file inside a tar is opened through :func:`local_file` (the member is copied to a
temporary file, never the shard unpacked): decoders need a path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from rap.atomic import write_text_atomic
from rap.data.adapters import SPLITS, load_records
from rap.data.records import ClipRecord, DataError, Kind
from rap.registry import PRETRAIN_SOURCES

WEB_DATASETS = PRETRAIN_SOURCES  # one caption per URL: records come from the manifest itself
TAR_SEP = "::"  # ClipRecord.path of a tar member: <shard.tar>::<member>


@dataclass(frozen=True)
class ManifestEntry:
    key: str
    path: str
    member: str | None
    caption: str | None
    digest: str
    bytes: int
    kind: Kind = "video"

    def media_path(self, root: Path) -> Path:
        """Where the media is: a file, or ``<tar>::<member>`` (open it with :func:`local_file`)."""
        full = Path(root) / self.path
        return Path(f"{full}{TAR_SEP}{self.member}") if self.member else full


def manifest_path(root: str | Path, dataset: str) -> Path:
    return Path(root) / "manifest" / f"{dataset}.jsonl"


def write_manifest(root: str | Path, dataset: str, entries: list[ManifestEntry]) -> Path:
    path = manifest_path(root, dataset)
    keys = [e.key for e in entries]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise DataError(f"{path}: key {dup!r} listed twice")
    write_text_atomic(path, "".join(json.dumps(asdict(e)) + "\n" for e in entries))
    return path


def read_manifest(root: str | Path, dataset: str) -> list[ManifestEntry]:
    path = manifest_path(root, dataset)
    if not path.is_file():
        raise DataError(f"{path}: no manifest; run `rap download {dataset}` or `rap import {dataset} PATH` first")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(ManifestEntry(**json.loads(line)))
        except (ValueError, TypeError) as err:
            raise DataError(f"{path}:{i}: not a manifest row ({err})") from None
    return out


def manifest_records(root: str | Path, dataset: str, split: str, *, check_sizes: bool = False) -> list[ClipRecord]:
    """The clips of ``split`` whose media arrived: extraction's one reader of its input.

    WebVid and CC3M: one record per manifest row (its caption), in manifest order. The other
    datasets: the annotation's records (adapters.py, all captions, every split) whose media
    the manifest lists, in annotation order."""
    root = Path(root)
    entries = read_manifest(root, dataset)
    if dataset in WEB_DATASETS:
        return [ClipRecord(e.key, e.media_path(root), (e.caption or "",), split, e.kind) for e in entries]
    arrived = {e.path for e in entries}
    records = load_records(dataset, root, split, check_sizes=check_sizes)
    return [r for r in records if _relative(r.path, root) in arrived]


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()


@contextlib.contextmanager
def local_file(path: str | Path) -> Iterator[Path]:
    """A real file holding the media at ``path``: ``path`` itself, or for ``<tar>::<member>``
    a temporary copy of the member (removed on exit)."""
    text = str(path)
    if TAR_SEP not in text:
        yield Path(path)
        return
    tar_path, member = text.split(TAR_SEP, 1)
    with tarfile.open(tar_path) as tar, tempfile.TemporaryDirectory(prefix="rap-member-") as tmp:
        src = tar.extractfile(member)
        if src is None:
            raise DataError(f"{tar_path}: no file member {member!r}")
        dest = Path(tmp) / Path(member).name
        with src, dest.open("wb") as out:
            shutil.copyfileobj(src, out)
        yield dest


def digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def entry_for_file(root: Path, key: str, path: Path, caption: str | None, kind: Kind) -> ManifestEntry:
    """A manifest row for a plain media file under ``root``."""
    return ManifestEntry(key, _relative(path, root), None, caption, digest_file(path), path.stat().st_size, kind)


def records_manifest(dataset: str, root: str | Path) -> tuple[list[ManifestEntry], int, list[str]]:
    """Manifest rows of the media the annotation files list that are on disk (every split,
    first listing wins, annotation order); returns (rows, media listed, absent media)."""
    root = Path(root)
    web = dataset in WEB_DATASETS
    seen: dict[Path, ClipRecord] = {}
    for split in SPLITS[dataset]:
        for r in load_records(dataset, root, split):
            seen.setdefault(r.path, r)
    rows, absent = [], []
    for path, r in seen.items():
        if path.is_file():
            rows.append(entry_for_file(root, r.video_id, path, r.captions[0] if web else None, r.kind))
        else:
            absent.append(str(path))
    return rows, len(seen), absent
