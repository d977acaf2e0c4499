"""Download throughput against a loopback server (issue 22): items/s of the new download path
(rap/data/fetch.py: input shards, processes x threads, a status record per URL, each video
checked by decoding it) against the old downloader (rap.data.download.fetch_many: one process,
threads, no check) at the same process count, and the new path with 2 processes against 1.

The server (tests/helpers/loopback.py, 127.0.0.1 only) serves real h264 clips of the embedded
generator, with ``--latency`` seconds of delay per request standing in for a network round
trip. Every figure comes from one run on this machine; read the ratios (absolute items/s
depend on the CPU, on what else runs on it, and on the stand-in latency).

    python benchmarks/bench_download.py [--items 240] [--threads 8] [--latency 0.05] [--shard-size 30]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from rap.data import fetch  # noqa: E402
from rap.data.download import Job, fetch_many  # noqa: E402

from helpers import loopback  # noqa: E402


def _serve(tmp: Path, items: int, latency: float) -> tuple[loopback.Loopback, list[fetch.Item]]:
    videos, _ = loopback.embedded_media(tmp / "media")
    files = {f"v{i:04d}.mp4": videos[i % len(videos)][1] for i in range(items)}
    server = loopback.start(files, {}, latency_s=latency)
    return server, [fetch.Item(f"{i:04d}", server.url(f"v{i:04d}.mp4"), "c") for i in range(items)]


def _old(items: list[fetch.Item], out: Path, threads: int) -> float:
    jobs = [Job(it.url, out / f"{it.key}.mp4") for it in items]
    t0 = time.perf_counter()
    done, _, missing = fetch_many(jobs, "old", workers=threads, retries=0)
    assert done == len(items) and not missing
    return len(items) / (time.perf_counter() - t0)


def _new(items: list[fetch.Item], out: Path, processes: int, threads: int, shard_size: int) -> float:
    t0 = time.perf_counter()
    rows, requested = fetch.fetch_list(
        items,
        out,
        kind="video",
        min_side=256,  # no clip is larger: the check decodes, nothing is re-encoded
        processes=processes,
        threads=threads,
        shard_size=shard_size,
        timeout_s=30,
        retries=0,
    )
    assert requested == len(items) and all(r["status"] == "success" for r in rows)
    return len(items) / (time.perf_counter() - t0)


def _spawn_startup(processes: int) -> float:
    """Seconds to start ``processes`` spawned workers that import the fetcher (what fetch_list
    pays once per call, whatever the list's length)."""
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_import_fetch, range(processes))
    return time.perf_counter() - t0


def _import_fetch(_: int) -> None:
    import rap.data.fetch  # noqa: F401


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=240)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds of delay per request (stand-in RTT)")
    ap.add_argument("--shard-size", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        server, items = _serve(tmp, args.items, args.latency)
        try:
            old = _old(items, tmp / "old", args.threads)
            new1 = _new(items, tmp / "new1", 1, args.threads, args.shard_size)
            new2 = _new(items, tmp / "new2", 2, args.threads, args.shard_size)
            startup = _spawn_startup(2)
        finally:
            server.close()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{args.items} clips, {args.threads} threads per process, {args.latency * 1000:.0f} ms per request")
    print(f"old downloader, 1 process      : {old:7.1f} items/s")
    print(f"new download path, 1 process   : {new1:7.1f} items/s  (new / old at 1 process: {new1 / old:.2f}x)")
    print(f"new download path, 2 processes : {new2:7.1f} items/s  (2 processes / 1: {new2 / new1:.2f}x)")
    steady = args.items / (args.items / new2 - startup)
    print(
        f"  of which starting the 2 workers: {startup:.2f} s; without it {steady:.1f} items/s "
        f"(2 processes / 1: {steady / new1:.2f}x; the start-up is paid once per list, per rap download)"
    )


if __name__ == "__main__":
    main()
