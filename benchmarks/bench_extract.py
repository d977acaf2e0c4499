"""`rap extract` items/s with 2 processes against 1, and the cost of a rerun (issue 17).

In one run: a WebVid-like corpus is generated (the embedded WebVid generator's manifest and
captions, every clip re-encoded at WebVid-2M's preview size: 596x336 h264, 25 fps, 2 s GOP,
``--seconds`` long; the manifest rewritten with the new clips' digests), then extracted with
params.yaml's paper-scale store settings (256 px, 2 fps, JPEG q90) by rap.data.extract with 1
and with 2 processes, each into a fresh copy; the index of both must be byte-identical. Printed:
items/s of each, their ratio, and the seconds of a rerun of the finished extraction (every item
taken from what the shard recorded: no probe, no hash, one stat per store file).

The ratio is what to read: absolute items/s depend on the CPU and on what else runs on it (the
2-process figure cannot exceed the CPUs this process may use, printed first).

    python benchmarks/bench_extract.py [--clips 32] [--seconds 6]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from rap.config import load_params
from rap.data import synthetic
from rap.data.extract import extract
from rap.data.manifest import digest_file, read_manifest, write_manifest
from rap.data.records import index_paths

ROOT = Path(__file__).resolve().parents[1]
DATASET = "webvid"
SRC_W, SRC_H, FPS = 596, 336, 25


def make_corpus(root: Path, clips: int, seconds: float) -> None:
    """The embedded WebVid corpus (>= ``clips`` items), cut to ``clips`` manifest rows whose
    media are re-encoded at the preview size and ``seconds`` long."""
    scale = clips / 240 + 0.01  # the embedded WebVid has 240 clips at scale 1
    synthetic.generate(DATASET, root / "raw" / DATASET, seed=0, scale=scale)
    entries = read_manifest(root, DATASET)[:clips]
    specs = synthetic._specs(np.random.default_rng(0), len(entries), unique=False, size=(SRC_W, SRC_H))
    for e, spec in zip(entries, specs):
        frames = synthetic.render(spec)  # 16-32 distinct frames, stretched to the clip length
        idx = np.linspace(0, len(frames) - 1, int(seconds * FPS)).round().astype(int)
        synthetic.write_video(root / e.path, frames[idx], fps=FPS, gop=2 * FPS)
    fresh = [replace(e, digest=digest_file(root / e.path), bytes=(root / e.path).stat().st_size) for e in entries]
    write_manifest(root, DATASET, fresh)


def timed_extract(root: Path, processes: int) -> tuple[float, dict]:
    cfg = load_params(ROOT / "params.yaml", {"scale": "paper", "data.root": str(root)}).cfg.data
    t = time.perf_counter()
    summary = extract(DATASET, cfg, processes=processes)
    return time.perf_counter() - t, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each clip")
    args = ap.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        src = Path(tmp) / "src"
        t = time.perf_counter()
        make_corpus(src, args.clips, args.seconds)
        print(f"CPUs this process may use: {cpus}")
        print(
            f"corpus: {args.clips} clips {SRC_W}x{SRC_H} h264 {FPS} fps, {args.seconds:g} s each "
            f"(generated in {time.perf_counter() - t:.1f} s); store: 256 px, 2 fps, jpeg q90"
        )
        rates, index = {}, {}
        for procs in (1, 2):
            root = Path(tmp) / f"p{procs}"
            shutil.copytree(src, root)
            secs, summary = timed_extract(root, procs)
            assert summary["usable"] == args.clips and summary["processes"] == procs, summary
            rates[procs] = args.clips / secs
            index[procs] = index_paths(root, DATASET)[0].read_bytes()
            print(f"{procs} process(es): {secs:6.2f} s  {rates[procs]:6.2f} items/s")
        assert index[1] == index[2], "the index differs between 1 and 2 processes"
        print(f"ratio 2 processes / 1: {rates[2] / rates[1]:.2f}x (index byte-identical)")
        secs, summary = timed_extract(Path(tmp) / "p2", 2)
        assert summary["reused"] == args.clips and summary["processed"] == 0, summary
        print(
            f"rerun of the finished extraction: {secs:.3f} s for {args.clips} items "
            f"({secs / args.clips * 1e3:.2f} ms/item, no probe, no hash; "
            f"first run {1 / rates[1] * 1e3:.0f} ms/item with 1 process)"
        )


if __name__ == "__main__":
    main()
