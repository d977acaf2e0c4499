"""``rap download DATASET``: fetch the public data (or generate the embedded corpus).

Machinery (:func:`fetch`): HTTP(S) with urllib; resumes a ``<file>.part`` with a ``Range``
request; verifies size and sha256 when known; writes atomically (``os.replace`` of the
finished part file), so a present file is complete and is skipped; retries transient
failures (connection errors, timeouts, 408/429/5xx, short bodies) with exponential backoff;
4xx answers fail at once. :func:`download` ends with a summary that lists what is missing.

Sources (``data.source = public``); every archive is unpacked by member name into the layout
adapters.py reads:

* webvid: ``results_2M_train.csv`` (Bain et al.; the publisher withdrew public hosting in
  2024: place the CSV in ``raw/webvid/`` by hand if the URL fails), then every row's
  ``contentUrl`` -> ``videos/{page_dir}/{videoid}.mp4``; dead links are listed, not fatal.
* cc3m: Google's ``Train_GCC-training.tsv``; every row's URL -> ``images/{row:08d}.jpg``;
  ``cc3m_train.json`` then lists the images that arrived.
* msrvtt: CLIP4Clip's ``msrvtt_data.zip`` (annotations, JSFusion splits) and Frozen-in-Time's
  ``MSRVTT.zip`` (videos, ~6 GB).
* didemo: LocalizingMoments ``{train,val,test}_data.json``; the Flickr videos are not
  redistributed at a stable URL: place them in ``raw/didemo/videos/`` (checked here).
* msvd: CLIP4Clip's ``msvd_data.zip`` (captions pickle, split lists) and UT Austin's
  ``YouTubeClips.tar``.
* lsmdc: licence-gated; request access at the LSMDC site and place the files by hand; this
  command prints where and verifies what is there.

``limit=N`` keeps the first N rows (videos) of every split's annotation (the full file is kept
as ``*.full``) and fetches/unpacks only their media; single-archive sources still download
the whole archive (they have no per-video URL).

With ``data.source = synthetic`` the dataset's part of the embedded corpus is generated
instead (synthetic.py; deterministic per (data.synthetic_seed, dataset)).
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import logging
import os
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from rap.atomic import atomic_write, write_text_atomic
from rap.config import DataConfig
from rap.data import fetch as fetcher
from rap.data import img2dataset, manifest, synthetic
from rap.data.adapters import LSMDC_FILES, PUBLISHED, SPLITS, didemo_video_key, load_records
from rap.data.manifest import ManifestEntry
from rap.data.records import DataError

log = logging.getLogger(__name__)

USER_AGENT = "rap-download/0.1 (+research reproduction)"
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """A download that failed for good (message names the URL and the file)."""


# ---------------------------------------------------------------------------------------
# One file
# ---------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, size: int | None, sha256: str | None) -> str | None:
    """None when ``path`` matches the expected size/sha256, else what is wrong."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"size {actual} != expected {size}"
    if sha256 is not None:
        digest = sha256_of(path)
        if digest != sha256.lower():
            return f"sha256 {digest[:16]}... != expected {sha256[:16]}..."
    return None


def fetch(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> str:
    """Download ``url`` to ``dest``; returns ``"skipped"`` (complete file present) or
    ``"downloaded"``. Raises :class:`DownloadError` after ``retries`` failed attempts."""
    dest = Path(dest)
    if dest.is_file():
        problem = _verify(dest, size, sha256)
        if problem is None:
            return "skipped"
        log.warning("%s: present but %s; downloading again", dest, problem)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last = "no attempt"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _fetch_once(url, part, timeout)
        except urllib.error.HTTPError as err:
            if err.code not in RETRYABLE_HTTP:
                raise DownloadError(f"{url} -> {dest}: HTTP {err.code} {err.reason}") from None
            last = f"HTTP {err.code}"
            continue
        except (
            urllib.error.URLError,
            http.client.HTTPException,
            socket.timeout,
            TimeoutError,
            ConnectionError,
            _ShortBody,
        ) as err:
            last = f"{type(err).__name__}: {err}"
            continue  # the .part file stays: the next attempt resumes it
        problem = _verify(part, size, sha256)
        if problem is not None:
            part.unlink()  # a corrupt part cannot be resumed: start over
            last = f"checksum mismatch ({problem})"
            continue
        os.replace(part, dest)  # not rap.atomic: the part file outlives attempts, to be resumed
        return "downloaded"
    raise DownloadError(f"{url} -> {dest}: failed after {retries + 1} attempts (last: {last})")


class _ShortBody(IOError):
    """The server closed the connection before Content-Length bytes arrived."""


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to fetch: the part is complete
            return
        raise
    with resp:
        if offset and resp.status != 206:  # server ignored Range: start over
            offset = 0
        expected = resp.headers.get("Content-Length")
        got = 0
        with part.open("ab" if offset else "wb") as f:
            while True:
                try:
                    block = resp.read(1 << 20)
                except http.client.IncompleteRead as err:
                    f.write(err.partial)
                    raise _ShortBody(f"{url}: connection closed early") from None
                if not block:
                    break
                f.write(block)
                got += len(block)
        if expected is not None and got < int(expected):
            raise _ShortBody(f"{url}: {got} of {expected} bytes")


@dataclass
class Job:
    url: str
    dest: Path
    sha256: str | None = None
    size: int | None = None


def fetch_many(
    jobs: list[Job], desc: str, *, workers: int = 8, retries: int = 3, backoff: float = 1.0
) -> tuple[int, int, list[str]]:
    """Fetch in parallel threads; failures are collected, not raised.
    Returns (downloaded, skipped, ["dest: reason", ...])."""
    done = skipped = 0
    missing: list[str] = []

    def one(job: Job):
        try:
            return fetch(job.url, job.dest, sha256=job.sha256, size=job.size, retries=retries, backoff=backoff), None
        except DownloadError as err:
            return None, f"{job.dest}: {err}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for status, err in tqdm(pool.map(one, jobs), total=len(jobs), desc=desc, unit="file"):
            if err:
                missing.append(err)
            elif status == "skipped":
                skipped += 1
            else:
                done += 1
    return done, skipped, missing


# ---------------------------------------------------------------------------------------
# Archives and annotation subsets
# ---------------------------------------------------------------------------------------


def _unpack(archive: Path, out_dir: Path, *, suffixes: tuple[str, ...], keep: set[str] | None = None) -> int:
    """Extract members ending in ``suffixes`` (flattened by basename, so top folders of the
    archive do not matter; never outside ``out_dir``); ``keep``: only these basenames.
    Existing files are left alone (each is written atomically, so an existing one is whole).
    Returns the number written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for m in z.infolist():
                name = Path(m.filename).name
                if m.is_dir() or not name.endswith(suffixes) or (keep is not None and name not in keep):
                    continue
                dest = out_dir / name
                if not dest.exists():
                    with z.open(m) as src:
                        atomic_write(dest, lambda dst: shutil.copyfileobj(src, dst), fsync=False)
                    n += 1
        return n
    with tarfile.open(archive) as t:
        for m in t:
            name = Path(m.name).name
            if not m.isfile() or not name.endswith(suffixes) or (keep is not None and name not in keep):
                continue
            dest = out_dir / name
            if not dest.exists():
                with t.extractfile(m) as src:
                    atomic_write(dest, lambda dst: shutil.copyfileobj(src, dst), fsync=False)
                n += 1
    return n


def _keep_full(path: Path) -> Path:
    """The untruncated annotation, kept beside the --limit subset as ``<name>.full``."""
    full = path.with_name(path.name + ".full")
    if not full.exists():  # atomic: a torn copy would pass for the original on the next run
        with path.open("rb") as src:
            atomic_write(full, lambda dst: shutil.copyfileobj(src, dst))
    return full


def _limit_lines(path: Path, n: int, header: bool) -> None:
    if not path.is_file():
        return
    lines = _keep_full(path).read_text(encoding="utf-8", errors="surrogateescape").splitlines(keepends=True)
    keep = lines[: n + 1] if header else lines[:n]
    write_text_atomic(path, "".join(keep), errors="surrogateescape")


def _limit_msrvtt_7k(raw: Path, n: int) -> None:
    """The 7k list cut to the first ``n`` official-train and ``n`` official-val videos, so that
    the 7k protocol keeps a validation split (the list's head is all official-train)."""
    path, data = raw / "MSRVTT_train.7k.csv", raw / "MSRVTT_data.json"
    if not path.is_file() or not data.is_file():
        return
    split_of = {
        v.get("video_id"): v.get("split") for v in json.loads(data.read_text(encoding="utf-8")).get("videos", [])
    }
    lines = _keep_full(path).read_text(encoding="utf-8", errors="surrogateescape").splitlines(keepends=True)
    taken: dict[str | None, int] = {}
    keep = lines[:1]
    for line in lines[1:]:
        split = split_of.get(line.strip().split(",")[0])
        if taken.get(split, 0) < n:
            taken[split] = taken.get(split, 0) + 1
            keep.append(line)
    write_text_atomic(path, "".join(keep), errors="surrogateescape")


def limit_annotations(dataset: str, raw: Path, n: int) -> None:
    """Rewrite each split's annotation to its first ``n`` videos (originals kept as .full)."""
    if dataset == "webvid":
        _limit_lines(raw / "results_2M_train.csv", n, header=True)
    elif dataset == "cc3m":
        _limit_lines(raw / "Train_GCC-training.tsv", n, header=False)
    elif dataset == "msrvtt":
        for f in ("MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv"):
            _limit_lines(raw / f, n, header=True)
        _limit_msrvtt_7k(raw, n)
    elif dataset == "didemo":
        for split in SPLITS["didemo"]:
            p = raw / f"{split}_data.json"
            if p.is_file():
                items = json.loads(_keep_full(p).read_text(encoding="utf-8"))
                keep = set(list(dict.fromkeys(didemo_video_key(it) for it in items))[:n])  # whole videos
                write_text_atomic(p, json.dumps([it for it in items if didemo_video_key(it) in keep]))
    elif dataset == "msvd":
        for split in SPLITS["msvd"]:
            _limit_lines(raw / f"{split}_list.txt", n, header=False)
    elif dataset == "lsmdc":
        for f in LSMDC_FILES.values():
            _limit_lines(raw / f, n, header=False)


# ---------------------------------------------------------------------------------------
# Per-dataset sources
# ---------------------------------------------------------------------------------------

URLS = {
    "webvid_csv": "https://www.robots.ox.ac.uk/~maxbain/webvid/results_2M_train.csv",
    "cc3m_tsv": "https://storage.googleapis.com/gcc-data/Train/GCC-training.tsv",
    "msrvtt_ann": "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip",
    "msrvtt_videos": "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip",
    "didemo_ann": "https://raw.githubusercontent.com/LisaAnne/LocalizingMoments/master/data/{split}_data.json",
    "msvd_ann": "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msvd_data.zip",
    "msvd_videos": "https://www.cs.utexas.edu/users/ml/clamp/videoDescription/YouTubeClips.tar",
}
MANUAL = {
    "didemo": "DiDeMo videos: follow https://github.com/LisaAnne/LocalizingMoments (download_videos.py / "
    "download_videos_AWS.py) and place them in raw/didemo/videos/ as saved (<video> or <video>.mp4) "
    "or re-encoded as <video name up to its first dot>.mp4.",
    "lsmdc": "LSMDC is licence-gated: request access at https://sites.google.com/site/describingmovies/download "
    f"(MPII/LSMDC), then place {', '.join(LSMDC_FILES.values())} in raw/lsmdc/ and the clips as "
    "raw/lsmdc/avi/<movie>/<clip>.avi.",
}


def _fetch_required(url: str, dest: Path, what: str) -> None:
    try:
        fetch(url, dest)
    except DownloadError as err:
        raise DownloadError(f"{err}\n{what}: place {dest.name} in {dest.parent} by hand and re-run") from None


def _annotation_text(
    dataset: str, raw: Path, name: str, url_key: str, what: str, limit: int | None, url: str | None = None
) -> str:
    """Fetch a dataset's annotation file (from ``url``, else the publisher's) when absent, cut
    it to ``limit`` rows, return its text."""
    path = raw / name
    if not path.is_file():
        _fetch_required(url or URLS[url_key], path, what)
    if limit:
        limit_annotations(dataset, raw, limit)
    return path.read_text(encoding="utf-8", errors="surrogateescape")


def _webvid_items(raw: Path, limit: int | None, url: str | None) -> list[fetcher.Item]:
    what = "WebVid-2M annotation (no longer served by its publisher: README, Paper-scale data)"
    text = _annotation_text("webvid", raw, "results_2M_train.csv", "webvid_csv", what, limit, url)
    rows = list(csv.DictReader(io.StringIO(text)))
    for i, r in enumerate(rows, 2):
        if not all(r.get(c) for c in ("videoid", "contentUrl", "name")):
            raise DataError(f"{raw / 'results_2M_train.csv'}:{i}: needs videoid, contentUrl and name")
    return [fetcher.Item(r["videoid"], r["contentUrl"], r["name"]) for r in rows]


def _cc3m_items(raw: Path, limit: int | None, url: str | None) -> list[fetcher.Item]:
    what = "CC3M annotation (Google Conceptual Captions)"
    text = _annotation_text("cc3m", raw, "Train_GCC-training.tsv", "cc3m_tsv", what, limit, url)
    items = []
    for i, line in enumerate(text.splitlines()):
        row = line.split("\t")
        if len(row) >= 2:  # key: the row number, as the release's image names
            items.append(fetcher.Item(f"{i:09d}", row[1].strip(), row[0]))
    return items


def _fetch_web(dataset: str, raw: Path, cfg: DataConfig, limit: int | None, retry_failed: bool) -> tuple[list, list]:
    """Fetch WebVid's or CC3M's URL list; returns (the list's items, their status rows)."""
    items = (_webvid_items if dataset == "webvid" else _cc3m_items)(raw, limit, getattr(cfg, dataset).list_url)
    f = cfg.fetch
    if dataset == "cc3m" and f.cc3m_tool == "img2dataset":
        out = raw / "img2dataset"
        failed = [it for it in items if img2dataset.statuses(out).get(it.key, {}).get("status") == "failed"]
        if retry_failed and failed:
            img2dataset.run(failed, out, img2dataset.next_retry_name(out), f, cfg.image_size)
        elif len(img2dataset.statuses(out)) < len(items):  # incremental: finished shards are skipped
            img2dataset.run(items, out, "main", f, cfg.image_size)
        latest = img2dataset.statuses(out)
        missing = {"status": "failed", "error_message": "not attempted", "path": None, "digest": None}
        return items, [
            latest.get(it.key) or {"key": it.key, "url": it.url, "caption": it.caption, **missing} for it in items
        ]
    kind = "video" if dataset == "webvid" else "image"
    rows, _ = fetcher.fetch_list(
        items,
        raw / "shards",
        kind=kind,
        min_side=cfg.image_size,
        processes=f.processes,
        threads=f.threads,
        shard_size=f.shard_size,
        timeout_s=f.timeout_s,
        retries=f.retries,
        retry_failed=retry_failed,
    )
    return items, rows


def _web_manifest(dataset: str, root: Path, rows: list[dict]) -> list[ManifestEntry]:
    kind = "video" if dataset == "webvid" else "image"
    out = []
    for r in rows:
        if r["status"] != "success":
            continue
        path = Path(r["path"])
        digest = r["digest"] or manifest.digest_file(path)
        out.append(
            ManifestEntry(r["key"], manifest._relative(path, root), None, r["caption"], digest, r["bytes"], kind)
        )
    return out


def _archive_videos(
    raw: Path, dataset: str, url: str, archive_name: str, out_dir: Path, suffixes: tuple[str, ...], limit: int | None
) -> int:
    keep = None
    if limit:  # only the media of the (limited) annotation
        keep = {r.path.name for s in SPLITS[dataset] for r in load_records(dataset, raw.parent.parent, s)}
    archive = raw / "archives" / archive_name
    _fetch_required(url, archive, f"{dataset} videos")
    return _unpack(archive, out_dir, suffixes=suffixes, keep=keep)


def _msrvtt(raw: Path, limit: int | None) -> dict:
    ann = raw / "archives" / "msrvtt_data.zip"
    _fetch_required(URLS["msrvtt_ann"], ann, "MSRVTT annotations")
    _unpack(ann, raw, suffixes=(".json", ".csv"))
    if limit:
        limit_annotations("msrvtt", raw, limit)
    n = _archive_videos(raw, "msrvtt", URLS["msrvtt_videos"], "MSRVTT.zip", raw / "videos" / "all", (".mp4",), limit)
    return {"downloaded": n, "skipped": 0, "missing": []}


def _didemo(raw: Path, limit: int | None) -> dict:
    for split in SPLITS["didemo"]:
        _fetch_required(URLS["didemo_ann"].format(split=split), raw / f"{split}_data.json", "DiDeMo annotations")
    if limit:
        limit_annotations("didemo", raw, limit)
    log.warning(MANUAL["didemo"])
    return {"downloaded": 0, "skipped": 0, "missing": []}


def _msvd(raw: Path, limit: int | None) -> dict:
    ann = raw / "archives" / "msvd_data.zip"
    _fetch_required(URLS["msvd_ann"], ann, "MSVD annotations")
    _unpack(ann, raw, suffixes=(".pkl", ".txt"))
    if limit:
        limit_annotations("msvd", raw, limit)
    n = _archive_videos(raw, "msvd", URLS["msvd_videos"], "YouTubeClips.tar", raw / "YouTubeClips", (".avi",), limit)
    return {"downloaded": n, "skipped": 0, "missing": []}


def _lsmdc(raw: Path, limit: int | None) -> dict:
    absent = [f for f in LSMDC_FILES.values() if not (raw / f).is_file()]
    if absent:
        raise DataError(f"{raw}: missing {', '.join(absent)}. {MANUAL['lsmdc']}")
    if limit:
        limit_annotations("lsmdc", raw, limit)
    return {"downloaded": 0, "skipped": 0, "missing": []}


PUBLIC = {"msrvtt": _msrvtt, "didemo": _didemo, "msvd": _msvd, "lsmdc": _lsmdc}


# ---------------------------------------------------------------------------------------
# The stage: fetch, count what arrived, write the manifest
# ---------------------------------------------------------------------------------------


class BelowThreshold(DataError):
    """Less of a dataset arrived than ``data.<dataset>.min_success`` asks."""


def _status_table(raw: Path, rows: list[dict]) -> Path:
    path = raw / "status.parquet"
    fetcher.write_status(path, rows)
    return path


def _size_warnings(dataset: str, root: Path, entries: list[ManifestEntry]) -> list[str]:
    """The published-size check on what arrived: a warning with numbers per split off by more
    than the published tolerance."""
    warnings = []
    for split in SPLITS[dataset]:
        pub = PUBLISHED.get((dataset, split))
        if pub is None or pub.videos is None:
            continue
        if dataset in manifest.WEB_DATASETS:
            n = len(entries)
        else:
            arrived = {e.path for e in entries}
            recs = load_records(dataset, root, split)
            n = len({r.path for r in recs if manifest._relative(r.path, root) in arrived})
        if abs(n - pub.videos) > pub.tol * pub.videos:
            warnings.append(
                f"{dataset}/{split}: {n:,} items arrived, published {pub.videos:,} "
                f"({n / pub.videos:.1%}; tolerance {pub.tol:.0%}; {pub.source})"
            )
    return warnings


def download(dataset: str, data_cfg: DataConfig, *, limit: int | None = None, retry_failed: bool = False) -> dict:
    """Fetch (``public``) or generate (``synthetic``) ``raw/<dataset>/`` and write the manifest
    of what arrived (manifest.py). Never fails for one item: raises :class:`BelowThreshold`
    when the share that arrived is below ``data.<dataset>.min_success``."""
    if dataset not in SPLITS:
        raise DataError(f"unknown dataset {dataset!r}; expected one of {tuple(SPLITS)}")
    root = Path(data_cfg.root)
    raw = root / "raw" / dataset
    limit = limit if limit is not None else data_cfg.download_limit
    if data_cfg.source == "synthetic":
        look = synthetic.SceneLook(data_cfg.synthetic_object_scale, data_cfg.synthetic_texture)
        synthetic.generate(dataset, raw, seed=data_cfg.synthetic_seed, scale=data_cfg.synthetic_scale, look=look)
    else:
        raw.mkdir(parents=True, exist_ok=True)
    status_file = None
    if data_cfg.source == "public" and dataset in manifest.WEB_DATASETS:
        items, rows = _fetch_web(dataset, raw, data_cfg, limit, retry_failed)
        entries, listed = _web_manifest(dataset, root, rows), len(items)
        status_file = _status_table(raw, rows)
        failures = [f"{r['url']}: {r['error_message']}" for r in rows if r["status"] != "success"]
        if dataset == "cc3m":  # the release's format too (adapters.py reads it)
            images = [{"image": manifest._relative(root / e.path, raw), "caption": e.caption} for e in entries]
            write_text_atomic(raw / "cc3m_train.json", json.dumps(images))
    else:
        if data_cfg.source == "public":
            PUBLIC[dataset](raw, limit)
        entries, listed, absent = manifest.records_manifest(dataset, root)
        failures = [f"{p}: absent" for p in absent]
    rate = len(entries) / listed if listed else 0.0
    threshold = data_cfg.min_success(dataset)
    where = status_file or raw
    msg = f"{dataset}: {len(entries):,} of {listed:,} items arrived: success rate {rate:.2%}"
    msg += f" (data.{dataset}.min_success {threshold:.2%})"
    if failures:
        msg += f"; {len(failures):,} failed, e.g.:\n  " + "\n  ".join(failures[:5]) + f"\n(all of them: {where})"
        if dataset in MANUAL:
            msg += f"\n{MANUAL[dataset]}"
    if rate < threshold or not entries:
        raise BelowThreshold(
            f"{dataset}: only {rate:.2%} of {listed:,} items arrived, below data.{dataset}.min_success = "
            f"{threshold:.2%}; what failed and why: {where}. Re-run with --retry-failed to fetch the failures "
            f"again, or lower data.{dataset}.min_success in params.yaml.\n{msg}"
        )
    manifest_file = manifest.write_manifest(root, dataset, entries)
    warnings = _size_warnings(dataset, root, entries) if data_cfg.check_sizes else []
    for w in warnings:
        log.warning("published-size check: %s", w)
    return {
        "dataset": dataset,
        "source": data_cfg.source,
        "limit": limit,
        "listed": listed,
        "arrived": len(entries),
        "failed": len(failures),
        "success_rate": rate,
        "manifest": str(manifest_file),
        "status": str(where),
        "size_warnings": warnings,
        "message": msg + f"\nmanifest: {manifest_file}",
    }
