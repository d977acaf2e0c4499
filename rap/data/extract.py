"""``rap extract DATASET``: probe every clip, write the index of usable clips and the list of
unusable ones, and (``data.frame_store``) pre-extract frames into the store.

Outputs under ``data.root``: ``index/<dataset>.jsonl`` (one line per (split, clip): the record
with cleaned captions + probe info + store file), ``index/<dataset>.bad.jsonl`` (one line per
unusable (split, clip) with the reason), ``frames/<dataset>/...`` (store.py).
Stops with :class:`DataError` (after writing the ``.bad.jsonl``, without an index) when the
unusable fraction of the dataset's distinct clips exceeds ``data.max_bad_fraction``.

In parallel and in shards (issue 17). The items are the distinct media files of the manifest,
each at its manifest position p. ``rap extract DATASET --shard I/N`` does the items with
``p % N == I`` in a process pool (:func:`processes_for`: the CPUs the job has, at most
``data.num_workers``) and, once they are all done, writes what it found for each (probe, store
file, or why it is unusable) to ``index/<dataset>.shards/<I>-of-<N>.jsonl`` atomically;
``--merge N`` makes the index of the N shard files; ``rap extract DATASET`` is shard 0/1 and its
merge. The index is a function of the items' results taken in manifest order: byte-identical
whatever the process and shard counts.

Tar shards (``data.store_format`` wds / wds-npy, rap/data/store.py): the items at manifest
positions ``[c * K, (c + 1) * K)`` (K = ``data.wds_shard_clips``) make chunk c, stored as one tar;
shard I/N then does the chunks with ``c % N == I`` (with one file per clip, K is 1: the items
with ``p % N == I``), so the tars, like the index, do not depend on the shard or process count.
A chunk's items are done in manifest order (the pool's ordered map) and its tar is written
atomically once all are done; a chunk with any item to redo is done again whole (a killed run
loses at most the chunks in flight; ``stop_after`` stops at a chunk's end).

Restart: each item's result is also appended to the shard's journal
(``<I>-of-<N>.journal.jsonl``) as it arrives. A rerun takes an item's result from the shard file
or the journal when its manifest row has the same key and content digest (the manifest's
``sha256``, computed once by ``rap download`` / ``rap import``), the store settings are the same
and its store file has the size recorded (one stat): no probe, no hash. A finished shard whose
items all pass is left as it is. An unusable item's result is kept too: the same bytes fail the
same way; a new download of it changes its digest, and it is tried again.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
from collections import Counter
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm

from rap import run_lock
from rap.atomic import atomic_write, write_text_atomic
from rap.config import DataConfig
from rap.data import decode, ground_truth, store
from rap.data.adapters import SPLITS
from rap.data.manifest import TAR_SEP, local_file, manifest_path, manifest_records, read_manifest
from rap.data.manifest import _relative as manifest_relpath
from rap.data.records import (
    ClipRecord,
    DataError,
    IndexEntry,
    ProbeInfo,
    clean_captions,
    index_paths,
    shard_index_path,
)
from rap.data.records import _rel as index_relpath

log = logging.getLogger(__name__)

# Version of the shard files' and journals' rows: files of another version are not read (their
# items are done again), so a change in what a row means never reuses stale results.
SHARD_FORMAT = 2  # 2: rows hold the stored bytes' sha256
# Pool start method: never fork, since the caller may hold threads (torch, a decoder) that a forked
# child would inherit mid-lock; the forkserver forks from a clean single-threaded process.
_START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


@dataclass(frozen=True)
class Item:
    """One distinct media file to extract: its manifest position and row (the media's path
    relative to data.root, ``<tar>::<member>`` for a member of a tar, and the content digest),
    and the first record that lists it."""

    pos: int
    key: str
    digest: str
    record: ClipRecord


@dataclass
class _Probed:
    info: ProbeInfo | None
    store: str | None
    reason: str | None
    sha256: str | None = None  # of the store file's bytes


def _store_frames(rec: ClipRecord, media: Path, info: ProbeInfo, cfg: DataConfig):
    """The uint8 (T, H, W, 3) frames a store keeps of one clip (raises decode.DecodeError)."""
    if rec.kind == "image" or decode.is_image(media):
        return decode.read_image(media, cfg.image_size)
    idx = store.store_indices(info, cfg.store_fps)
    return decode.read_frames(media, idx, cfg.image_size, src_size=(info.width, info.height))


def _probe_and_store_file(
    rec: ClipRecord, media: Path, dataset: str, cfg: DataConfig, root: Path, digest: str
) -> tuple[_Probed, int]:
    """Probe one clip and, when asked, write its store file. Returns (result, bytes written)."""
    try:
        info = decode.probe(media)
    except decode.DecodeError as err:
        return _Probed(None, None, str(err)), 0
    if not cfg.frame_store:
        return _Probed(info, None, None), 0
    # keyed by the clip's path as the index writes it (relative to data.root): the store's names,
    # and so its DVC hash, do not depend on where the data directory lives; and by the manifest's
    # content digest (no second read of the file to hash it)
    rel = store.store_relpath(
        dataset,
        Path(index_relpath(rec.path, root)),
        rec.video_id,
        cfg.image_size,
        cfg.store_fps,
        fmt=cfg.store_format,
        quality=cfg.store_jpeg_quality,
        source_digest=digest,
    )
    dest = root / rel
    if store.is_complete(dest):
        return _Probed(info, rel, None, hashlib.sha256(dest.read_bytes()).hexdigest()), 0
    try:
        frames = _store_frames(rec, media, info, cfg)
    except decode.DecodeError as err:
        return _Probed(None, None, str(err)), 0
    data = store.encode_clip(frames, cfg.store_format, quality=cfg.store_jpeg_quality)
    atomic_write(dest, data, fsync=False)  # a kill never leaves a torn file under the final name
    return _Probed(info, rel, None, hashlib.sha256(data).hexdigest()), len(data)


def _row(item: Item, info: ProbeInfo | None, reason: str | None) -> dict[str, Any]:
    """An item's result as the shard file and the journal record it (store and size: see callers)."""
    return {
        "p": item.pos,
        "key": item.key,
        "digest": item.digest,
        "id": item.record.video_id,
        "info": None if info is None else list(astuple(info)),
        "store": None,
        "size": None,
        "store_sha256": None,
        "reason": reason,
    }


def extract_item(dataset: str, cfg: DataConfig, root: Path, item: Item) -> tuple[dict[str, Any], int]:
    """Probe (and store) one item in whichever process runs it; returns (its row, bytes written).
    The row is what the shard file and the journal record and the merge reads."""
    with local_file(item.record.path) as media:  # a member of an imported tar shard: a temporary copy
        probed, written = _probe_and_store_file(item.record, media, dataset, cfg, root, item.digest)
    row = _row(item, probed.info, probed.reason)
    if probed.store:
        row |= {"store": probed.store, "size": (root / probed.store).stat().st_size, "store_sha256": probed.sha256}
    return row, written


def extract_member(cfg: DataConfig, item: Item) -> tuple[dict[str, Any], bytes | None]:
    """Probe one item and encode its frames as a tar-shard member (wds formats), in whichever
    process runs it; returns (its row, without store and size yet; the member's bytes, None for
    an unusable item). The caller writes the chunk's tar in manifest order."""
    with local_file(item.record.path) as media:
        try:
            info = decode.probe(media)
            frames = _store_frames(item.record, media, info, cfg)
        except decode.DecodeError as err:
            return _row(item, None, str(err)), None
    fmt = store.WDS_FORMATS[cfg.store_format]
    return _row(item, info, None), store.encode_clip(frames, fmt, quality=cfg.store_jpeg_quality)


# ---------------------------------------------------------------------------------------
# Items, shards, processes
# ---------------------------------------------------------------------------------------


def _records(root: Path, dataset: str, cfg: DataConfig) -> list[ClipRecord]:
    """Every (split, clip) record whose media arrived (rap download / rap import wrote the
    manifest), not every listed item."""
    splits = SPLITS.get(dataset, ())
    if not splits:
        raise DataError(f"unknown dataset {dataset!r}; expected one of {tuple(SPLITS)}")
    return [r for s in splits for r in manifest_records(root, dataset, s, check_sizes=cfg.check_sizes)]


def items_of(root: Path, dataset: str, records: Iterable[ClipRecord]) -> list[Item]:
    """The distinct media files of ``records`` in manifest order (the first row of a file and
    the first record listing it win)."""
    rows: dict[str, tuple[int, str, str]] = {}
    for pos, e in enumerate(read_manifest(root, dataset)):
        row = (pos, f"{e.path}{TAR_SEP}{e.member}" if e.member else e.path, e.digest)
        rows.setdefault(str(e.media_path(root)), row)  # a web dataset's records: the media path itself
        if not e.member:
            rows.setdefault(e.path, row)  # the annotation's records: found by path under data.root
    items: dict[Path, Item] = {}
    for r in records:
        if r.path in items:
            continue
        row = rows.get(str(r.path)) or rows.get(_relpath(r.path, root))
        if row is None:
            raise DataError(f"{manifest_path(root, dataset)}: no row for {r.path} (listed by {dataset}'s records)")
        items[r.path] = Item(row[0], row[1], row[2], r)
    return sorted(items.values(), key=lambda it: it.pos)


def _relpath(path: Path, root: Path) -> str:
    try:
        return manifest_relpath(path, root)
    except ValueError:  # outside data.root (an imported copy): matched by its full path only
        return str(path)


def check_shard(shard: int, shards: int) -> None:
    if not (shards >= 1 and 0 <= shard < shards):
        raise DataError(f"shard {shard}/{shards}: expected I/N with N >= 1 and 0 <= I < N")


def chunk_size(cfg: DataConfig) -> int:
    """Items per unit of work and storage: a tar shard's clips (wds formats), else 1."""
    return cfg.wds_shard_clips if cfg.frame_store and cfg.store_format in store.WDS_FORMATS else 1


def shard_items(items: list[Item], shard: int, shards: int, chunk: int = 1) -> list[Item]:
    """The items of shard ``shard`` of ``shards``: those of the chunks c (manifest positions p
    with p // chunk == c) with c % shards == shard."""
    check_shard(shard, shards)
    return [it for it in items if (it.pos // chunk) % shards == shard]


def processes_for(cfg: DataConfig) -> int:
    """Extraction processes: the CPUs this job may run on (its affinity mask: what SLURM's CPU
    binding leaves it), at most ``data.num_workers``; one when that is 0."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, cfg.num_workers))


def _results(work: Callable[[Item], Any], todo: list[Item], processes: int, *, ordered: bool = False) -> Iterator[Any]:
    """``work`` over ``todo``: here with one process, else in a pool (results as they finish,
    in any order, for the caller to order by manifest position; or, ``ordered``, in ``todo``'s)."""
    if processes <= 1 or len(todo) <= 1:
        yield from map(work, todo)
        return
    procs = min(processes, len(todo))
    chunk = max(1, min(16, len(todo) // (procs * 4)))  # small chunks: even load, steady journal
    ctx = multiprocessing.get_context(_START_METHOD)
    if _START_METHOD == "forkserver":  # the decoders are imported once, in the server, not per worker
        ctx.set_forkserver_preload([__name__])
    with ctx.Pool(procs) as pool:
        yield from (pool.imap if ordered else pool.imap_unordered)(work, todo, chunksize=chunk)


def _chunks(items: list[Item], per_chunk: int) -> list[list[Item]]:
    """``items`` (in manifest order) grouped by chunk (manifest position // per_chunk)."""
    return [list(group) for _, group in itertools.groupby(items, key=lambda it: it.pos // per_chunk)]


def _tar_chunk_rows(
    dataset: str, cfg: DataConfig, root: Path, todo: list[Item], processes: int
) -> Iterator[tuple[dict[str, Any], int]]:
    """Do ``todo`` (whole chunks) chunk by chunk: its items in manifest order, their members
    written into the chunk's tar as they arrive, then (row, bytes written) for each item, rows
    naming their member (``<tar>#<offset>,<length>``) and the tar's size (what a rerun checks)."""
    work = functools.partial(extract_member, cfg)
    for chunk in _chunks(todo, chunk_size(cfg)):
        content = "".join(f"{it.key}\t{it.digest}\n" for it in chunk).encode("utf-8", "surrogateescape")
        tar_rel = store.wds_tar_relpath(
            dataset,
            chunk[0].pos // chunk_size(cfg),
            hashlib.sha1(content).hexdigest(),
            cfg.image_size,
            cfg.store_fps,
            fmt=cfg.store_format,
            quality=cfg.store_jpeg_quality,
        )
        names = [
            store.member_name(Path(index_relpath(it.record.path, root)), it.record.video_id, cfg.store_format)
            for it in chunk
        ]
        rows: list[dict[str, Any]] = []

        def members() -> Iterator[tuple[str, bytes]]:
            for name, (row, data) in zip(names, _results(work, chunk, processes, ordered=True)):
                rows.append(row)
                if data is not None:
                    row["store_sha256"] = hashlib.sha256(data).hexdigest()
                    yield name, data

        spans = store.write_tar(root / tar_rel, members())
        size = (root / tar_rel).stat().st_size
        for i, (name, row) in enumerate(zip(names, rows)):
            if row["reason"] is None:
                row |= {"store": store.member_ref(tar_rel, *spans[name]), "size": size}
            yield row, size if i == 0 else 0


# ---------------------------------------------------------------------------------------
# Shard files and journals
# ---------------------------------------------------------------------------------------


def _settings(cfg: DataConfig) -> dict[str, Any]:
    """What an item's result depends on besides its bytes: a change makes recorded rows stale."""
    settings = {
        "frame_store": cfg.frame_store,
        "image_size": cfg.image_size,
        "store_fps": cfg.store_fps,
        "store_format": cfg.store_format,
        "store_jpeg_quality": cfg.store_jpeg_quality,
    }
    return settings | ({"wds_shard_clips": cfg.wds_shard_clips} if chunk_size(cfg) > 1 else {})


def _header(dataset: str, cfg: DataConfig, shard: int, shards: int, n_items: int) -> dict[str, Any]:
    return {
        "format": SHARD_FORMAT,
        "dataset": dataset,
        "shard": shard,
        "shards": shards,
        "items": n_items,
        "settings": _settings(cfg),
    }


def _journal_path(shard_file: Path) -> Path:
    return shard_file.with_name(shard_file.name.replace(".jsonl", ".journal.jsonl"))


def _read_rows(path: Path, dataset: str, cfg: DataConfig) -> tuple[dict | None, list[dict]]:
    """(header, rows) of a shard file or journal; (None, []) when absent or made by another
    format or other settings. A torn last line (a kill in mid-append) ends the rows."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None, []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    if not rows:
        return None, []
    head = rows[0]
    ok = isinstance(head, dict) and head.get("format") == SHARD_FORMAT and head.get("dataset") == dataset
    if not ok or head.get("settings") != _settings(cfg):
        return None, []
    return head, rows[1:]


def _reusable(row: dict | None, item: Item, root: Path) -> bool:
    """A recorded result that still holds: same content (manifest digest), same record, and its
    store file (if any) still of the size it was written with (a stat, not a read)."""
    if row is None or row.get("digest") != item.digest or row.get("id") != item.record.video_id:
        return False
    if row.get("store") is None:
        return True
    try:
        return (root / store.store_file(row["store"])).stat().st_size == row["size"]
    except OSError:
        return False


def _write_rows(path: Path, head: dict, rows: Iterable[dict]) -> None:
    # ASCII escapes: a path or reason holding undecodable bytes (lone surrogates) round-trips
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in [head, *rows]))


def extract_shard(
    dataset: str,
    data_cfg: DataConfig,
    shard: int,
    shards: int,
    *,
    processes: int | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Probe (and store) the items of shard ``shard``/``shards``; once all are done, write the
    shard file. ``stop_after``: do at most that many new items, then stop (the shard is then not
    complete; a rerun resumes from the journal). Returns a summary dict of counts."""
    root = Path(data_cfg.root)
    out = shard_index_path(root, dataset, shard, shards)
    out.parent.mkdir(parents=True, exist_ok=True)
    # one process per shard: a job array requeued while the old job still runs would otherwise
    # write the same journal twice (rap/run_lock.py: a live holder is named, a dead one taken over)
    lock = run_lock.acquire(out.with_suffix(".lock"), f"rap extract {dataset} --shard {shard}/{shards}")
    try:
        return _extract_shard(dataset, data_cfg, shard, shards, processes=processes, stop_after=stop_after)
    finally:
        lock.release()


def _extract_shard(
    dataset: str, data_cfg: DataConfig, shard: int, shards: int, *, processes: int | None, stop_after: int | None
) -> dict[str, Any]:
    root = Path(data_cfg.root)
    per_chunk = chunk_size(data_cfg)
    items = shard_items(items_of(root, dataset, _records(root, dataset, data_cfg)), shard, shards, per_chunk)
    out = shard_index_path(root, dataset, shard, shards)
    journal = _journal_path(out)
    head, done = _read_rows(out, dataset, data_cfg)
    recorded = {r.get("key"): r for r in done}
    recorded.update((r.get("key"), r) for r in _read_rows(journal, dataset, data_cfg)[1])
    # at the item's position now (a manifest rewritten with other rows moves it)
    rows = {it.pos: {**recorded[it.key], "p": it.pos} for it in items if _reusable(recorded.get(it.key), it, root)}
    if per_chunk > 1:  # a tar is never appended to: a chunk with an item to do is done again whole
        for chunk in _chunks(items, per_chunk):
            if any(it.pos not in rows for it in chunk):
                for it in chunk:
                    rows.pop(it.pos, None)
    n_proc = processes or processes_for(data_cfg)
    summary = {
        "dataset": dataset,
        "shard": f"{shard}/{shards}",
        "items": len(items),
        "reused": len(rows),
        "processed": 0,
        "processes": n_proc,
        "store_bytes_written": 0,
        "shard_index": str(out),
    }
    same = head is not None and (head["shard"], head["shards"]) == (shard, shards)
    if (
        same
        and len(rows) == len(items)
        and [(r["key"], r["digest"]) for r in done] == [(it.key, it.digest) for it in items]
    ):
        return {**summary, "bad": sum(r["reason"] is not None for r in done), "complete": True}
    todo = [it for it in items if it.pos not in rows]
    if stop_after is not None:  # whole chunks: those started before stop_after items were done
        starts = [i for i, it in enumerate(todo) if i == 0 or it.pos // per_chunk != todo[i - 1].pos // per_chunk]
        todo = todo[: next((i for i in starts if i >= max(0, stop_after)), len(todo))]
    new_head = _header(dataset, data_cfg, shard, shards, len(items))
    # the journal restarts from what still holds (a torn line or a stale row dropped), then grows
    _write_rows(journal, new_head, (rows[it.pos] for it in items if it.pos in rows))
    if per_chunk > 1:
        new_rows = _tar_chunk_rows(dataset, data_cfg, root, todo, n_proc)
    else:
        new_rows = _results(functools.partial(extract_item, dataset, data_cfg, root), todo, n_proc)
    desc = f"extract {dataset}" + (f" {shard}/{shards}" if shards > 1 else "")
    with (
        journal.open("a", encoding="utf-8") as jf,
        tqdm(total=len(items), initial=len(rows), desc=desc, unit="clip") as bar,
    ):
        for row, nbytes in new_rows:
            jf.write(json.dumps(row) + "\n")
            jf.flush()  # a kill loses at most the item in flight
            rows[row["p"]] = row
            summary["processed"] += 1
            summary["store_bytes_written"] += nbytes
            bar.update()
    complete = len(rows) == len(items)
    if complete:
        _write_rows(out, new_head, (rows[it.pos] for it in items))
    else:
        log.info(
            "extract %s %d/%d: stopped with %d of %d items left",
            dataset,
            shard,
            shards,
            len(items) - len(rows),
            len(items),
        )
    return {**summary, "bad": sum(r["reason"] is not None for r in rows.values()), "complete": complete}


# ---------------------------------------------------------------------------------------
# The merge: index, bad list, ground truth
# ---------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _write_truth_index(root: Path, dataset: str, indexed: set[str]) -> None:
    """``index/<dataset>.truth.jsonl``: the ground truth of the indexed clips (embedded corpus;
    an empty file for data without one), so that evaluation reads a declared output of this
    stage rather than the raw download."""
    raw = root / "raw" / dataset
    videos = {Path(p).resolve().relative_to(raw.resolve()).as_posix() for p in _under(indexed, root, raw)}
    lines = ground_truth.indexed_truth_lines(raw, videos)
    write_text_atomic(ground_truth.truth_index_path(root, dataset), "".join(lines))


def _under(paths: set[str], root: Path, raw: Path) -> list[Path]:
    """Index paths (relative to data.root, or absolute) of the clips stored under ``raw``."""
    out = []
    for p in paths:
        full = Path(p) if Path(p).is_absolute() else root / p
        if full.resolve().is_relative_to(raw.resolve()):
            out.append(full)
    return out


def _shard_rows(root: Path, dataset: str, cfg: DataConfig, items: list[Item], shards: int) -> dict[int, dict]:
    """Every item's row from the ``shards`` shard files, each checked against the manifest."""
    rows: dict[int, dict] = {}
    for shard in range(shards):
        path = shard_index_path(root, dataset, shard, shards)
        redo = f"run `rap extract {dataset} --shard {shard}/{shards}`"
        if not path.is_file():
            raise DataError(f"{path}: shard {shard}/{shards} of {dataset} is not finished; {redo}")
        head, done = _read_rows(path, dataset, cfg)
        mine = shard_items(items, shard, shards, chunk_size(cfg))
        if head is None or (head["shard"], head["shards"]) != (shard, shards):
            raise DataError(f"{path}: made with other store settings ({_settings(cfg)} now); {redo}")
        if [(r["key"], r["digest"]) for r in done] != [(it.key, it.digest) for it in mine]:
            raise DataError(f"{path}: made from another manifest ({manifest_path(root, dataset)} changed); {redo}")
        rows.update((it.pos, r) for it, r in zip(mine, done))
    return rows


def merge(dataset: str, data_cfg: DataConfig, shards: int, *, store_bytes_written: int = 0) -> dict[str, Any]:
    """Write the index, the bad list and the ground truth of ``dataset`` from its ``shards``
    shard files; returns a summary dict of counts."""
    root = Path(data_cfg.root)
    records = _records(root, dataset, data_cfg)
    items = items_of(root, dataset, records)
    rows = _shard_rows(root, dataset, data_cfg, items, shards)
    probed = {it.record.path: rows[it.pos] for it in items}
    good, bad, dropped = [], [], 0
    per_split: Counter = Counter()
    for r in records:
        row = probed[r.path]
        caps, n_drop = clean_captions(r.captions)
        dropped += n_drop
        reason = row["reason"] or (None if caps else f"no usable caption in {r.captions!r:.100}")
        if reason:
            bad.append({"video_id": r.video_id, "path": str(r.path), "split": r.split, "reason": reason})
            continue
        rec = ClipRecord(r.video_id, r.path, caps, r.split, r.kind)
        good.append(IndexEntry(rec, ProbeInfo(*row["info"]), row["store"], row["store_sha256"]).to_json(root))
        per_split[r.split] += 1
    index_path, bad_path = index_paths(root, dataset)
    _write_jsonl(bad_path, bad)
    bad_videos = {b["path"] for b in bad}
    frac = len(bad_videos) / max(1, len(items))
    summary = {
        "dataset": dataset,
        "records": len(records),
        "videos": len(items),
        "usable": len(good),
        "bad": len(bad),
        "bad_videos": len(bad_videos),
        "bad_fraction": round(frac, 4),
        "captions_dropped": dropped,
        "per_split": dict(per_split),
        "frame_store": data_cfg.frame_store,
        "store_format": data_cfg.store_format,
        "store_bytes_written": store_bytes_written,
        "shards": shards,
        "index": str(index_path),
        "bad_index": str(bad_path),
    }
    for b in bad[:20]:
        log.warning("unusable %s clip %s: %s", dataset, b["path"], b["reason"])
    if frac > data_cfg.max_bad_fraction:
        if index_path.exists():
            index_path.unlink()  # a stale index must not let training go on with this data
        reasons = Counter(b["reason"].split(": ", 1)[-1].split(" (")[0] for b in bad)
        raise DataError(
            f"{dataset}: {len(bad_videos)}/{len(items)} clips unusable ({frac:.1%} > "
            f"data.max_bad_fraction={data_cfg.max_bad_fraction:.1%}); see {bad_path}; "
            f"e.g. {bad[0]['path']}: {bad[0]['reason']}; reasons: {dict(reasons.most_common(3))}"
        )
    _write_jsonl(index_path, good)
    _write_truth_index(root, dataset, {r["path"] for r in good})
    log.info("extract %s: %s", dataset, summary)
    return summary


def extract(
    dataset: str, data_cfg: DataConfig, *, processes: int | None = None, stop_after: int | None = None
) -> dict[str, Any]:
    """Probe (and store) every clip of ``dataset`` and write its index: shard 0/1, then its
    merge (:func:`extract_shard`, :func:`merge`). Returns a summary dict of counts; with
    ``stop_after`` items done before the end, the shard's summary (``complete`` False, no index)."""
    part = extract_shard(dataset, data_cfg, 0, 1, processes=processes, stop_after=stop_after)
    if not part["complete"]:
        return part
    summary = merge(dataset, data_cfg, 1, store_bytes_written=part["store_bytes_written"])
    return {**summary, **{k: part[k] for k in ("reused", "processed", "processes")}}
