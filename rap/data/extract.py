"""``rap extract DATASET``: probe every clip, write the index of usable clips and the list of
unusable ones, and (``data.frame_store``) pre-extract frames into the store.

Outputs under ``data.root``: ``index/<dataset>.jsonl`` (one line per (split, clip): the record
with cleaned captions + probe info + store file), ``index/<dataset>.bad.jsonl`` (one line per
unusable (split, clip) with the reason), ``frames/<dataset>/...`` (store.py).
Stops with :class:`DataError` (after writing the ``.bad.jsonl``, without an index) when the
unusable fraction of the dataset's distinct clips exceeds ``data.max_bad_fraction``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from rap.atomic import write_text_atomic
from rap.config import DataConfig
from rap.data import decode, ground_truth, store
from rap.data.adapters import SPLITS
from rap.data.manifest import local_file, manifest_records
from rap.data.records import ClipRecord, DataError, IndexEntry, ProbeInfo, clean_captions, index_paths
from rap.data.records import _rel as index_relpath

log = logging.getLogger(__name__)


@dataclass
class _Probed:
    info: ProbeInfo | None
    store: str | None
    reason: str | None


def _probe_and_store(rec: ClipRecord, dataset: str, cfg: DataConfig, root: Path) -> tuple[_Probed, int]:
    """Probe one clip and, when asked, write its store file. Returns (result, bytes written)."""
    with local_file(rec.path) as media:  # a member of an imported tar shard: a temporary copy
        return _probe_and_store_file(rec, media, dataset, cfg, root)


def _probe_and_store_file(
    rec: ClipRecord, media: Path, dataset: str, cfg: DataConfig, root: Path
) -> tuple[_Probed, int]:
    try:
        info = decode.probe(media)
    except decode.DecodeError as err:
        return _Probed(None, None, str(err)), 0
    if not cfg.frame_store:
        return _Probed(info, None, None), 0
    # keyed by the clip's path as the index writes it (relative to data.root): the store's names,
    # and so its DVC hash, do not depend on where the data directory lives
    rel = store.store_relpath(
        dataset,
        Path(index_relpath(rec.path, root)),
        rec.video_id,
        cfg.image_size,
        cfg.store_fps,
        fmt=cfg.store_format,
        quality=cfg.store_jpeg_quality,
        source_digest=store.source_digest(media),
    )
    dest = root / rel
    if store.is_complete(dest):
        return _Probed(info, rel, None), 0
    try:
        if rec.kind == "image" or decode.is_image(media):
            frames = decode.read_image(media, cfg.image_size)
        else:
            idx = store.store_indices(info, cfg.store_fps)
            frames = decode.read_frames(media, idx, cfg.image_size, src_size=(info.width, info.height))
    except decode.DecodeError as err:
        return _Probed(None, None, str(err)), 0
    return _Probed(info, rel, None), store.write_clip(dest, frames, quality=cfg.store_jpeg_quality)


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


def extract(dataset: str, data_cfg: DataConfig, *, splits: tuple[str, ...] | None = None) -> dict:
    """Probe (and store) every clip of ``dataset``; returns a summary dict of counts."""
    root = Path(data_cfg.root)
    splits = splits or SPLITS.get(dataset, ())
    if not splits:
        raise DataError(f"unknown dataset {dataset!r}; expected one of {tuple(SPLITS)}")
    # what arrived (rap download / rap import wrote the manifest), not every listed item
    records = [r for s in splits for r in manifest_records(root, dataset, s, check_sizes=data_cfg.check_sizes)]
    unique: dict[Path, ClipRecord] = {}
    for r in records:
        unique.setdefault(r.path, r)
    probed: dict[Path, _Probed] = {}
    written = 0
    for path, rec in tqdm(unique.items(), desc=f"extract {dataset}", unit="clip"):
        probed[path], nbytes = _probe_and_store(rec, dataset, data_cfg, root)
        written += nbytes
    good, bad, dropped = [], [], 0
    per_split: Counter = Counter()
    for r in records:
        p = probed[r.path]
        caps, n_drop = clean_captions(r.captions)
        dropped += n_drop
        reason = p.reason or (None if caps else f"no usable caption in {r.captions!r:.100}")
        if reason:
            bad.append({"video_id": r.video_id, "path": str(r.path), "split": r.split, "reason": reason})
            continue
        rec = ClipRecord(r.video_id, r.path, caps, r.split, r.kind)
        good.append(IndexEntry(rec, p.info, p.store).to_json(root))
        per_split[r.split] += 1
    index_path, bad_path = index_paths(root, dataset)
    _write_jsonl(bad_path, bad)
    bad_videos = {b["path"] for b in bad}
    frac = len(bad_videos) / max(1, len(unique))
    summary = {
        "dataset": dataset,
        "records": len(records),
        "videos": len(unique),
        "usable": len(good),
        "bad": len(bad),
        "bad_videos": len(bad_videos),
        "bad_fraction": round(frac, 4),
        "captions_dropped": dropped,
        "per_split": dict(per_split),
        "frame_store": data_cfg.frame_store,
        "store_format": data_cfg.store_format,
        "store_bytes_written": written,
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
            f"{dataset}: {len(bad_videos)}/{len(unique)} clips unusable ({frac:.1%} > "
            f"data.max_bad_fraction={data_cfg.max_bad_fraction:.1%}); see {bad_path}; "
            f"e.g. {bad[0]['path']}: {bad[0]['reason']}; reasons: {dict(reasons.most_common(3))}"
        )
    _write_jsonl(index_path, good)
    _write_truth_index(root, dataset, {r["path"] for r in good})
    log.info("extract %s: %s", dataset, summary)
    return summary
