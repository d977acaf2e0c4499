"""Fetch a list of media URLs the way img2dataset / video2dataset do, never fatal per item.

The contract (the field's tools', kept where they cannot run; data.fetch in params.yaml):

* the list is cut into input shards of ``shard_size`` URLs; shard ``i`` writes its media to
  ``<out>/{i:05d}/<key>.<ext>`` (the tools' ``files`` output: no directory holds more than one
  shard) and its status record to ``<out>/{i:05d}.parquet``: one row per URL with ``key, url,
  caption, status (success | failed), error_message, path, digest, bytes, width, height``;
* shards run in ``processes`` processes, each fetching with ``threads`` threads;
* an item that answers 4xx/5xx, times out, arrives short or does not decode is recorded with
  its error and skipped; transient failures (timeout, 408/429/5xx, short body) are retried
  ``retries`` times first;
* media are resized at download so that the short side is ``min_side`` (the training
  resolution, data.image_size) when larger, never upscaled: what extraction reads is kept,
  the rest of the bytes are not stored;
* a shard whose status record exists is done: a rerun fetches nothing, unless
  ``retry_failed`` (then only its failed URLs are fetched again).
"""

from __future__ import annotations

import http.client
import io
import logging
import multiprocessing
import socket
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rap.atomic import atomic_write
from rap.data.manifest import digest_bytes

log = logging.getLogger(__name__)

USER_AGENT = "rap-download/0.2 (+research reproduction)"
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
STATUS_COLUMNS = ("key", "url", "caption", "status", "error_message", "path", "digest", "bytes", "width", "height")


@dataclass(frozen=True)
class Item:
    key: str
    url: str
    caption: str


@dataclass(frozen=True)
class ShardJob:
    index: int
    items: tuple[Item, ...]
    out: Path  # the list's output folder
    kind: str  # video | image
    min_side: int
    threads: int
    timeout_s: float
    retries: int
    retry_failed: bool


class ItemError(Exception):
    """One item failed; the message is what the status record keeps."""


class _Transient(ItemError):
    """Worth another attempt (timeout, 408/429/5xx, short body)."""


def status_path(out: Path, shard: int) -> Path:
    return out / f"{shard:05d}.parquet"


def shards_of(items: list[Item], shard_size: int) -> list[tuple[Item, ...]]:
    return [tuple(items[i : i + shard_size]) for i in range(0, len(items), shard_size)]


# ---------------------------------------------------------------------------------------
# One item
# ---------------------------------------------------------------------------------------


def _get(url: str, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            expected = resp.headers.get("Content-Length")
            data = resp.read()
    except urllib.error.HTTPError as err:
        cls = _Transient if err.code in TRANSIENT_HTTP else ItemError
        raise cls(f"HTTP {err.code} {err.reason}") from None
    except http.client.IncompleteRead as err:
        raise _Transient(f"short body: {len(err.partial)} bytes, connection closed early") from None
    except (socket.timeout, TimeoutError) as err:
        raise _Transient(f"timeout after {timeout:g} s ({err})") from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, OSError) as err:
        raise _Transient(f"{type(err).__name__}: {err}") from None
    if expected is not None and len(data) != int(expected):
        raise _Transient(f"short body: {len(data)} of {expected} bytes")
    return data


def _image(data: bytes, min_side: int) -> tuple[bytes, int, int]:
    """The JPEG to keep (resized to short side ``min_side`` when larger) and its size."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ItemError(f"not a decodable image: {err}") from None
    w, h = img.size
    if min(w, h) <= min_side and img.format == "JPEG":
        return data, w, h
    scale = min(1.0, min_side / min(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = io.BytesIO()
    img.convert("RGB").resize(size, Image.BICUBIC).save(out, "JPEG", quality=95)
    return out.getvalue(), size[0], size[1]


def _video(data: bytes, min_side: int) -> tuple[bytes, int, int]:
    """The mp4 to keep: the original when its short side is at most ``min_side``, else
    re-encoded (h264) to that short side. Raises ItemError when it does not decode."""
    import av

    try:  # decoded from memory: no temporary file for the check
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise ItemError("no video stream")
            frame = next(container.decode(container.streams.video[0]), None)
    except (av.error.FFmpegError, ValueError) as err:
        raise ItemError(f"not a decodable video: {getattr(err, 'strerror', None) or err}") from None
    if frame is None:
        raise ItemError("no decodable frame")
    w, h = frame.width, frame.height
    if min(w, h) <= min_side:
        return data, w, h
    with tempfile.TemporaryDirectory(prefix="rap-fetch-") as tmp:
        src = Path(tmp) / "in.mp4"
        src.write_bytes(data)
        return _resize_video(src, Path(tmp) / "out.mp4", w, h, min_side)


def _resize_video(src: Path, dest: Path, w: int, h: int, min_side: int) -> tuple[bytes, int, int]:
    import av

    scale = min_side / min(w, h)
    nw, nh = (max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2))
    try:
        with av.open(str(src)) as inp, av.open(str(dest), "w", format="mp4") as out:
            vin = inp.streams.video[0]
            vout = out.add_stream("libx264", rate=vin.average_rate or 25, options={"crf": "20"})
            vout.width, vout.height, vout.pix_fmt = nw, nh, "yuv420p"
            for frame in inp.decode(vin):
                frame = frame.reformat(width=nw, height=nh, format="yuv420p")
                frame.pts = None
                out.mux(vout.encode(frame))
            out.mux(vout.encode(None))
    except av.error.FFmpegError as err:
        raise ItemError(f"resize failed: {err}") from None
    return dest.read_bytes(), nw, nh


def fetch_item(item: Item, job: ShardJob) -> dict:
    """Fetch, check and store one item; its status row (never raises for the item's own faults)."""
    row = {"key": item.key, "url": item.url, "caption": item.caption, "status": "failed", "error_message": None}
    row.update(path=None, digest=None, bytes=None, width=None, height=None)
    ext = ".mp4" if job.kind == "video" else ".jpg"
    dest = job.out / f"{job.index:05d}" / f"{item.key}{ext}"
    error = "no attempt"
    for attempt in range(job.retries + 1):
        if attempt:
            time.sleep(0.2 * 2 ** (attempt - 1))
        try:
            data = _get(item.url, job.timeout_s)
            media, w, h = (_video if job.kind == "video" else _image)(data, job.min_side)
        except _Transient as err:
            error = str(err)
            continue
        except ItemError as err:
            error = str(err)
            break
        atomic_write(dest, media, fsync=False)
        row.update(status="success", error_message=None, path=str(dest), digest=digest_bytes(media))
        row.update(bytes=len(media), width=w, height=h)
        return row
    row["error_message"] = error
    return row


# ---------------------------------------------------------------------------------------
# One shard, the whole list
# ---------------------------------------------------------------------------------------


def _read_status(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def write_status(path: Path, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows, schema=STATUS_SCHEMA)
    atomic_write(path, lambda f: pq.write_table(table, f), fsync=False)


STATUS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("path", pa.string()),
        ("digest", pa.string()),
        ("bytes", pa.int64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
    ]
)


def _needs_work(job: ShardJob) -> bool:
    """A shard without a status record, or (retry_failed) with failures in it."""
    status = status_path(job.out, job.index)
    if not status.is_file():
        return True
    return job.retry_failed and any(
        r != "success" for r in pq.read_table(status, columns=["status"])["status"].to_pylist()
    )


def run_shard(job: ShardJob) -> tuple[int, int]:
    """Fetch one input shard (those of its items not yet settled); returns (fetched, kept)."""
    status = status_path(job.out, job.index)
    previous = {r["key"]: r for r in _read_status(status)} if status.is_file() else {}
    todo = [
        it
        for it in job.items
        if it.key not in previous or (job.retry_failed and previous[it.key]["status"] != "success")
    ]
    if not todo:
        return 0, len(job.items)
    with ThreadPoolExecutor(max_workers=job.threads) as pool:
        fresh = {r["key"]: r for r in pool.map(lambda it: fetch_item(it, job), todo)}
    rows = [fresh.get(it.key) or previous[it.key] for it in job.items]
    write_status(status, rows)
    return len(todo), len(job.items) - len(todo)


def fetch_list(
    items: list[Item],
    out: Path,
    *,
    kind: str,
    min_side: int,
    processes: int,
    threads: int,
    shard_size: int,
    timeout_s: float,
    retries: int,
    retry_failed: bool = False,
) -> tuple[list[dict], int]:
    """Fetch ``items`` into ``out`` (module docstring); returns (one status row per item, in
    list order; the number of URLs requested in this run)."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        ShardJob(i, shard, out, kind, min_side, threads, timeout_s, retries, retry_failed)
        for i, shard in enumerate(shards_of(items, shard_size))
    ]
    jobs_to_run = [job for job in jobs if _needs_work(job)]
    counts = [(0, len(job.items)) for job in jobs if job not in jobs_to_run]
    if processes > 1 and len(jobs_to_run) > 1:
        # spawn: the parent may hold threads (tqdm, a server in tests); fork would copy their locks
        with multiprocessing.get_context("spawn").Pool(min(processes, len(jobs_to_run))) as pool:
            counts += pool.map(run_shard, jobs_to_run, chunksize=1)
    else:
        counts += [run_shard(job) for job in jobs_to_run]
    rows = [r for job in jobs for r in _read_status(status_path(out, job.index))]
    return rows, sum(fetched for fetched, _ in counts)
