"""Loader throughput: clips/s of K=4 frames at 256 px with ONE DataLoader worker.

Compares, in one run on freshly generated h264 clips (596x336, WebVid-2M's preview size; 25 fps;
2 s GOP), every sample resized to a 256 px short side:
  1. on-the-fly decoding through rap.data (decord resize-on-decode + train transform),
  2. the npy frame store through rap.data (memory-mapped uint8 + train transform),
  3. the jpeg frame store through rap.data (K JPEG decodes + train transform),
  4. a plain decord loop (open + get_batch of 4 random frames, no transform) as reference.
Prints clips/s, bytes per clip (source video, npy, jpeg), the ratios, and whether each store
is >= 5x on-the-fly.

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
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the jpeg store")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        paths = make_clips(tmp, args.clips, args.seconds)
        took = time.perf_counter() - t
        print(f"generated {len(paths)} clips of {args.seconds:.0f} s at {SRC_W}x{SRC_H} in {took:.1f} s")
        t = time.perf_counter()
        live, stored = [], {"npy": [], "jpeg": []}
        for i, p in enumerate(paths):
            info = decode.probe(p)
            frames = decode.read_frames(p, store.store_indices(info, args.store_fps), SIZE, (info.width, info.height))
            rec = ClipRecord(p.stem, p, ("a clip",), "train")
            live.append(Clip(rec, info))
            for fmt, clips in stored.items():
                sp = tmp / "frames" / f"{i}{store.FORMATS[fmt]}"
                store.write_clip(sp, frames, quality=args.quality)
                clips.append(Clip(rec, info, sp))
        print(
            f"store extraction (npy + jpeg q{args.quality}) at {args.store_fps:g} fps: "
            f"{time.perf_counter() - t:.1f} s, {len(frames)} frames per clip"
        )
        size = {"video": np.mean([p.stat().st_size for p in paths])}
        size.update({fmt: np.mean([c.store.stat().st_size for c in clips]) for fmt, clips in stored.items()})
        kw = dict(frames=K, sampling="rand", image_size=SIZE, two_views=False)
        rates = {"live": rate(ClipTextDataset(live, **kw), args.passes)}
        rates.update({fmt: rate(ClipTextDataset(clips, **kw), args.passes) for fmt, clips in stored.items()})
        rates["plain"] = plain_decord(paths, args.passes)
    names = {
        "live": "on-the-fly decode (rap.data)",
        "npy": "npy frame store (rap.data)",
        "jpeg": f"jpeg q{args.quality} store (rap.data)",
        "plain": "plain decord loop (no transform)",
    }
    per_clip = {"live": size["video"], "npy": size["npy"], "jpeg": size["jpeg"], "plain": size["video"]}
    print(f"{'mode':<34}{'clips/s/worker':>15}{'KiB/clip':>10}")
    for k, name in names.items():
        print(f"{name:<34}{rates[k]:>15.1f}{per_clip[k] / 2**10:>10.1f}")
    r = rates
    print(
        f"npy / on-the-fly = {r['npy'] / r['live']:.1f}x; jpeg / on-the-fly = {r['jpeg'] / r['live']:.1f}x; "
        f"jpeg / npy = {r['jpeg'] / r['npy']:.2f}x"
    )
    print(
        f"npy / plain decord = {r['npy'] / r['plain']:.1f}x; jpeg / plain decord = {r['jpeg'] / r['plain']:.1f}x; "
        f"on-the-fly / plain decord = {r['live'] / r['plain']:.2f}x"
    )
    print(
        f"bytes per clip: npy / jpeg = {size['npy'] / size['jpeg']:.1f}x smaller; "
        f"jpeg / source h264 = {size['jpeg'] / size['video']:.2f}x"
    )
    for fmt in ("npy", "jpeg"):
        print(f"{fmt} store >= 5x on-the-fly: {'yes' if r[fmt] >= 5 * r['live'] else 'NO'}")


if __name__ == "__main__":
    main()
