"""``rap import DATASET PATH``: hand a copy the user already holds to the pipeline, without
copying it. Writes the same manifest as ``rap download`` (manifest.py); paths outside
``data.root`` are kept absolute.

Layouts recognised, in this order:

(a) WebVid as released: ``PATH/videos/{page_dir}/{videoid}.mp4`` beside the CSV
    (``results_2M_train.csv`` or any CSV with videoid, page_dir, name) in PATH;
(b) webdataset shards (``*.tar``, from video2dataset / img2dataset) anywhere under PATH: a
    sample is the members sharing a key (``<key>.mp4|.jpg|...`` with ``<key>.txt`` or
    ``<key>.json`` holding the caption); or the tools' ``files`` output (the same names as
    plain files);
(c) any dataset laid out as ``raw/<dataset>/`` (DiDeMo, LSMDC, MSR-VTT, MSVD placed by hand:
    the annotation files and media as adapters.py reads them): ``raw/<dataset>`` becomes a
    link to PATH when PATH lies elsewhere, and the manifest lists the media on disk.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import tarfile
from pathlib import Path

from rap.config import DataConfig
from rap.data import manifest
from rap.data.manifest import WEB_DATASETS, ManifestEntry
from rap.data.records import DataError

log = logging.getLogger(__name__)

MEDIA = {".mp4": "video", ".webm": "video", ".mkv": "video", ".avi": "video", ".jpg": "image", ".jpeg": "image"}
MEDIA.update({".png": "image", ".webp": "image"})


def _abs(path: Path, root: Path) -> str:
    """Relative to data.root when inside it, else absolute (a copy elsewhere is not moved)."""
    path = path.resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _release_webvid(src: Path, root: Path) -> list[ManifestEntry] | None:
    csvs = [src / "results_2M_train.csv"] if (src / "results_2M_train.csv").is_file() else sorted(src.glob("*.csv"))
    if not (src / "videos").is_dir() or not csvs:
        return None
    out = []
    for path in csvs:
        with path.open(encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f), 2):
                if not all(row.get(c) for c in ("videoid", "page_dir", "name")):
                    raise DataError(f"{path}:{i}: needs videoid, page_dir and name (WebVid's CSV)")
                video = src / "videos" / row["page_dir"] / f"{row['videoid']}.mp4"
                if video.is_file():
                    digest = manifest.digest_file(video)
                    size = video.stat().st_size
                    out.append(ManifestEntry(row["videoid"], _abs(video, root), None, row["name"], digest, size))
    return out


def _caption(text: str | None, meta: str | None) -> str | None:
    if text is not None:
        return text.strip()
    if meta is not None:
        value = json.loads(meta)
        return value.get("caption") if isinstance(value, dict) else None
    return None


def _tar_entries(tar_path: Path, root: Path) -> list[ManifestEntry]:
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            if m.isfile():
                key, _, ext = m.name.rpartition("/")[2].partition(".")
                samples.setdefault(key, {})["." + ext.lower()] = m
        out = []
        for key, members in samples.items():
            media = next((ext for ext in members if ext in MEDIA), None)
            if media is None:
                continue

            def read(ext: str) -> str | None:
                return tar.extractfile(members[ext]).read().decode("utf-8") if ext in members else None

            data = tar.extractfile(members[media]).read()
            caption = _caption(read(".txt"), read(".json"))
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            path = _abs(tar_path, root)
            out.append(ManifestEntry(key, path, members[media].name, caption, digest, len(data), MEDIA[media]))
    return out


def _files_entries(src: Path, root: Path) -> list[ManifestEntry]:
    out = []
    for path in sorted(p for p in src.rglob("*") if p.suffix.lower() in MEDIA and p.is_file()):
        txt, meta = path.with_suffix(".txt"), path.with_suffix(".json")
        caption = _caption(
            txt.read_text(encoding="utf-8") if txt.is_file() else None,
            meta.read_text(encoding="utf-8") if meta.is_file() else None,
        )
        if caption is not None:
            out.append(manifest.entry_for_file(root, path.stem, path, caption, MEDIA[path.suffix.lower()]))
    return [ManifestEntry(**{**e.__dict__, "path": _abs(root / e.path, root)}) for e in out]


def _shards(src: Path, root: Path) -> list[ManifestEntry]:
    tars = sorted(src.rglob("*.tar"))
    if tars:
        return [e for t in tars for e in _tar_entries(t, root)]
    return _files_entries(src, root)


def _link_raw(dataset: str, src: Path, root: Path) -> None:
    """Point ``raw/<dataset>`` at ``src`` (a link, nothing copied); refuse to replace a folder
    that already holds something else."""
    raw = root / "raw" / dataset
    if raw.resolve() == src.resolve():
        return
    if raw.is_symlink():
        raw.unlink()  # a link made by an earlier import: only the link goes, not what it points to
    elif raw.exists():
        if any(raw.iterdir()):
            raise DataError(
                f"{raw} already holds files; move it aside (nothing is deleted for you) or import from {raw} itself"
            )
        raw.rmdir()
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.symlink_to(src.resolve(), target_is_directory=True)


def import_copy(dataset: str, src: str | Path, data_cfg: DataConfig) -> dict:
    """Write ``manifest/<dataset>.jsonl`` for the copy at ``src``; returns a summary."""
    src, root = Path(src), Path(data_cfg.root)
    if not src.is_dir():
        raise DataError(f"{src}: not a directory")
    layout, entries = None, None
    if dataset == "webvid":
        entries = _release_webvid(src, root)
        layout = "release (videos/{page_dir}/{videoid}.mp4 + CSV)" if entries is not None else None
    if entries is None and dataset in WEB_DATASETS:
        entries, layout = _shards(src, root), "webdataset shards / files output"
    if entries is None:
        _link_raw(dataset, src, root)
        entries, listed, absent = manifest.records_manifest(dataset, root)
        layout = f"raw/{dataset} layout ({listed:,} media listed, {len(absent):,} absent)"
    if not entries:
        raise DataError(f"{src}: no {dataset} media found (layouts: see `rap import --help`)")
    path = manifest.write_manifest(root, dataset, entries)
    msg = f"{dataset}: imported {len(entries):,} items from {src} as {layout}; manifest: {path}"
    return {"dataset": dataset, "items": len(entries), "layout": layout, "manifest": str(path), "message": msg}
