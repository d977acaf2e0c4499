"""Frame-store formats through the training loader (issue 17, parts 2 and 6): clips/s of
pre-training's TrainLoader with 0, 1 and 2 DataLoader workers from the one-file-per-clip stores
(npy, jpeg) and from tar shards (wds: JPEG clips, wds-npy: npy clips; a sample is one open and
one mmap/pread at the member's recorded offset), with files and bytes on disk per format.

The clips are bench_loader's (h264 at WebVid-2M's preview size, 596x336, 25 fps), stored at the
paper's 256 px and 2 fps with the store's own writers (rap.data.store: write_clip, write_tar,
the bytes ``rap extract`` writes). The loader is bench_loader.train_loader: the real
TrainLoader, two views, K=4, tokenised captions, paper batch 30. Every figure comes from one run
on this machine; the ratios are what to read. The paper-scale file counts are COMPUTED from the
clip count (5.8M WebVid + CC3M items), not measured.

    python benchmarks/bench_store.py [--clips 12] [--seconds 8] [--batches 6] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_loader  # noqa: E402  (its clips, scales and loader)

from rap.config import DataConfig, TextConfig  # noqa: E402
from rap.data import decode, store  # noqa: E402
from rap.data.datasets import Clip  # noqa: E402
from rap.data.records import ClipRecord  # noqa: E402
from rap.model.tokenizer import build_tokenizer  # noqa: E402

FORMATS = ("npy", "jpeg", "wds", "wds-npy")
PAPER_ITEMS = 2_500_000 + 3_300_000


def write_formats(tmp: Path, paths: list[Path], scale: bench_loader.Scale, quality: int, per_tar: int) -> dict:
    """Every clip in every format: {format: (clips, files written)}."""
    frames, clips_of = [], {fmt: [] for fmt in FORMATS}
    recs = []
    for i, p in enumerate(paths):
        info = decode.probe(p)
        frames.append(
            decode.read_frames(p, store.store_indices(info, scale.store_fps), scale.size, (info.width, info.height))
        )
        recs.append((ClipRecord(p.stem, p, (f"a shape moves across clip {i}",), "train"), info))
    files: dict[str, list[Path]] = {fmt: [] for fmt in FORMATS}
    for fmt in ("npy", "jpeg"):
        for i, (rec, info) in enumerate(recs):
            path = tmp / fmt / f"{i}{store.FORMATS[fmt]}"
            store.write_clip(path, frames[i], quality=quality)
            files[fmt].append(path)
            clips_of[fmt].append(Clip(rec, info, path))
    for fmt, member in store.WDS_FORMATS.items():
        for c in range(math.ceil(len(recs) / per_tar)):
            idx = range(c * per_tar, min(len(recs), (c + 1) * per_tar))
            tar = tmp / fmt / f"{c:06d}.tar"
            names = [f"{i}{store.FORMATS[member]}" for i in idx]
            spans = store.write_tar(
                tar, ((n, store.encode_clip(frames[i], member, quality=quality)) for n, i in zip(names, idx))
            )
            files[fmt].append(tar)
            for n, i in zip(names, idx):
                rec, info = recs[i]
                clips_of[fmt].append(Clip(rec, info, Path(store.member_ref(str(tar), *spans[n]))))
    return {fmt: (clips_of[fmt], files[fmt]) for fmt in FORMATS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--batches", type=int, default=6, help="batches per timed epoch")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is printed")
    ap.add_argument("--per-tar", type=int, default=4, help="clips per tar here (the paper scale: 1000)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    quality, paper = DataConfig().store_jpeg_quality, bench_loader.SCALES[1]
    tokenizer = build_tokenizer(TextConfig(name="tiny", pretrained=False, tokenizer="builtin"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = bench_loader.make_clips(tmp, args.clips, args.seconds)
        stored = write_formats(tmp, paths, paper, quality, args.per_tar)
        runs: dict[tuple[str, int], list[float]] = {(fmt, w): [] for fmt in FORMATS for w in args.workers}
        for _ in range(args.rounds):  # formats interleaved, so that a busy moment hits them all
            for fmt, w in runs:
                loader = bench_loader.train_loader(stored[fmt][0], paper, w, args.batches, tokenizer)
                runs[fmt, w].append(bench_loader.loader_rate(loader)[0])
        rates = {key: statistics.median(r) for key, r in runs.items()}
        # the same tensors from every lossless pair: one clip read through each store
        same = all(
            np.array_equal(np.asarray(store.read_clip(a.store)[:]), np.asarray(store.read_clip(b.store)[:]))
            for x, y in (("npy", "wds-npy"), ("jpeg", "wds"))
            for a, b in zip(stored[x][0], stored[y][0])
        )
        disk = {fmt: (len(files), sum(f.stat().st_size for f in files)) for fmt, (_, files) in stored.items()}

    print(
        f"{args.clips} clips of {args.seconds:g} s stored at {paper.size} px, {paper.store_fps:g} fps; "
        f"TrainLoader, paper batch {paper.batch}, two views, K={bench_loader.K}; "
        f"{len(os.sched_getaffinity(0))} CPU core(s) here"
    )
    print(f"\nclips/s, median of {args.rounds} interleaved rounds of {args.batches} batches")
    print(f"{'store':<9}{'workers':>8}{'clips/s':>10}{'/ npy':>8}")
    for fmt in FORMATS:
        for w in args.workers:
            print(f"{fmt:<9}{w:>8}{rates[fmt, w]:>10.1f}{rates[fmt, w] / rates['npy', w]:>8.2f}x")
    print("\ntar shards against the same clips one file each, at equal workers:")
    for w in args.workers:
        wds, wds_npy = rates["wds", w] / rates["jpeg", w], rates["wds-npy", w] / rates["npy", w]
        print(f"  {w} workers: wds / jpeg {wds:.2f}x, wds-npy / npy {wds_npy:.2f}x")
    print(f"frames read back identical (npy = wds-npy, jpeg = wds, every clip): {'yes' if same else 'NO'}")
    print(f"\n{'store':<9}{'files':>7}{'KiB/clip':>10}{'files at 5.8M items (computed)':>33}")
    for fmt in FORMATS:
        n_files, nbytes = disk[fmt]
        at_scale = PAPER_ITEMS if fmt in ("npy", "jpeg") else math.ceil(PAPER_ITEMS / DataConfig().wds_shard_clips)
        print(f"{fmt:<9}{n_files:>7}{nbytes / args.clips / 2**10:>10.1f}{at_scale:>33,}")
    print(
        f"(tars here hold {args.per_tar} clips; the paper scale's data.wds_shard_clips: {DataConfig().wds_shard_clips})"
    )


if __name__ == "__main__":
    main()
