"""Loader throughput: clips/s of K=4 frames at 256 px with ONE DataLoader worker.

Compares, in one run on freshly generated h264 clips (596x336, WebVid-2M's preview size; 25 fps;
2 s GOP), every sample resized to a 256 px short side:
  1. on-the-fly decoding through rap.data (decord resize-on-decode + train transform),
  2. the pre-extracted frame store through rap.data (memory-mapped .npy + train transform),
  3. a plain decord loop (open + get_batch of 4 random frames, no transform) as reference.
Prints the ratios and whether store >= 5x on-the-fly holds.

    python benchmarks/bench_loader.py [--clips 12] [--seconds 8] [--passes 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from rap.data import decode, store, synthetic
from rap.data.datasets import Clip, ClipTextDataset
from rap.data.records import ClipRecord
from rap.data.sampling import sample_indices

SIZE, K, FPS = 256, 4, 25


SRC_W, SRC_H = 596, 336


def make_clips(out: Path, n: int, seconds: float) -> list[Path]:
    rng = np.random.default_rng(0)
    specs = synthetic._specs(rng, n, unique=True, size=(SRC_W, SRC_H))
    paths = []
    for i, spec in enumerate(specs):
        frames = synthetic.render(spec)  # 16-32 distinct frames, stretched to the clip length
        idx = np.linspace(0, len(frames) - 1, int(seconds * FPS)).round().astype(int)
        p = out / f"clip{i:03d}.mp4"
        synthetic.write_video(p, frames[idx], fps=FPS, gop=2 * FPS)
        paths.append(p)
    return paths


def _first(batch):
    return batch[0]["video"]


def rate(ds, passes: int) -> float:
    """Samples/s through a 1-worker DataLoader (batch 1), after one warm-up sample."""
    loader = DataLoader(ds, batch_size=1, num_workers=1, collate_fn=_first)
    n, it = 0, iter(loader)
    next(it)
    t = time.perf_counter()
    for _ in it:
        n += 1
    for _ in range(passes - 1):
        for _ in loader:
            n += 1
    return n / (time.perf_counter() - t)


def plain_decord(paths: list[Path], passes: int) -> float:
    import decord

    rng = np.random.default_rng(0)
    t, n = time.perf_counter(), 0
    for _ in range(passes):
        for p in paths:
            vr = decord.VideoReader(str(p), ctx=decord.cpu(0), num_threads=1, width=454, height=256)
            vr.get_batch(sample_indices(len(vr), K, "rand", rng)).asnumpy()
            n += 1
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--store-fps", type=float, default=2.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        paths = make_clips(tmp, args.clips, args.seconds)
        print(f"generated {len(paths)} clips of {args.seconds:.0f} s at {SRC_W}x{SRC_H} in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        live, stored = [], []
        for i, p in enumerate(paths):
            info = decode.probe(p)
            frames = decode.read_frames(p, store.store_indices(info, args.store_fps), SIZE, (info.width, info.height))
            sp = tmp / "frames" / f"{i}.npy"
            store.write_clip(sp, frames)
            rec = ClipRecord(p.stem, p, ("a clip",), "train")
            live.append(Clip(rec, info))
            stored.append(Clip(rec, info, sp))
        print(f"store extraction at {args.store_fps} fps: {time.perf_counter() - t:.1f} s "
              f"({sum(c.store.stat().st_size for c in stored) / 2**20:.1f} MiB)")
        kw = dict(frames=K, sampling="rand", image_size=SIZE, two_views=False)
        r_live = rate(ClipTextDataset(live, **kw), args.passes)
        r_store = rate(ClipTextDataset(stored, **kw), args.passes)
        r_plain = plain_decord(paths, args.passes)
    print(f"{'mode':<34}{'clips/s':>10}")
    print(f"{'on-the-fly decode (rap.data)':<34}{r_live:>10.1f}")
    print(f"{'frame store (rap.data)':<34}{r_store:>10.1f}")
    print(f"{'plain decord loop (no transform)':<34}{r_plain:>10.1f}")
    print(f"store / on-the-fly = {r_store / r_live:.1f}x; store / plain decord = {r_store / r_plain:.1f}x; "
          f"on-the-fly / plain decord = {r_live / r_plain:.2f}x")
    print(f"store >= 5x on-the-fly: {'yes' if r_store >= 5 * r_live else 'NO'}")


if __name__ == "__main__":
    main()
