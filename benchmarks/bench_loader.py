"""Loader throughput against what the training step consumes (issue 12).

In one run, on freshly generated h264 clips (596x336, WebVid-2M's preview size; 25 fps; 2 s GOP):

1. Decoding: clips/s of K=4 frames at 256 px with ONE DataLoader worker (batch 1) for
   on-the-fly decoding through rap.data (decord resize-on-decode + train transform), the npy
   frame store (memory-mapped uint8), the jpeg frame store (K JPEG decodes), and a plain decord
   loop (no transform) as reference; bytes per clip of the source video and of both stores.
2. The training loader itself (rap.data.datasets.TrainLoader: one DataLoader per run,
   persistent workers, uint8 frames, pre-training's two views, tokenised captions, the
   pre-training batch), with 0, 1 and 2 workers (``--workers``), from the npy and the jpeg
   store, at the embedded scale (64 px, batch 16) and the paper scale (256 px, batch 30):
   clips/s and clips/s per worker.
3. What the step consumes, against 2:
   * embedded model, this machine: clips/s of its training step (forward + backward + AdamW,
     fp32, params.yaml's embedded model and batch), MEASURED;
   * paper scale on an H100: clips/s one rank's step needs, COMPUTED (not measured) as
     30 clips / (FLOPs per step / (MFU x bf16 peak)), with the FLOPs per step counted in this
     run by bench_step.count_flops (meta device) and an assumed MFU (``--mfu``); and the
     workers that takes at the per-worker rates of 2.
4. Bytes per step per rank shipped by the loader at the paper scale, uint8 (today) against
   the float32 frames it used to ship, measured on a collated paper-scale batch.

All figures come from one run on this machine; the ratios are what to read (absolute clips/s
depend on the CPU and on what else runs on it).

    python benchmarks/bench_loader.py [--clips 12] [--seconds 8] [--passes 3] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from rap.config import TextConfig, load_params
from rap.data import decode, store, synthetic
from rap.data.datasets import Clip, ClipTextDataset, Collate, MixedDataset, TrainLoader
from rap.data.mixing import MixedBatchSampler
from rap.data.records import ClipRecord
from rap.data.sampling import sample_indices
from rap.model.tokenizer import build_tokenizer
from rap.model.video import normalize_frames

ROOT = Path(__file__).resolve().parents[1]
SIZE, K, FPS = 256, 4, 25
L = 30  # caption tokens (model.text.max_len_train)


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


@dataclass(frozen=True)
class Scale:
    name: str
    size: int  # px (short side stored, square crop)
    batch: int  # clips per rank per step
    store_fps: float


SCALES = (Scale("embedded", 64, 16, 8.0), Scale("paper", SIZE, 30, 2.0))


def write_stores(tmp: Path, paths: list[Path], size: int, fps: float, quality: int) -> dict[str, list[Clip]]:
    """npy and jpeg store files of every clip at ``size`` px and ``fps``."""
    stored: dict[str, list[Clip]] = {"npy": [], "jpeg": []}
    for i, p in enumerate(paths):
        info = decode.probe(p)
        frames = decode.read_frames(p, store.store_indices(info, fps), size, (info.width, info.height))
        rec = ClipRecord(p.stem, p, (f"a shape moves across clip {i}",), "train")
        for fmt, clips in stored.items():
            sp = tmp / "frames" / f"{size}px" / f"{i}{store.FORMATS[fmt]}"
            store.write_clip(sp, frames, quality=quality)
            clips.append(Clip(rec, info, sp))
    return stored


def train_loader(clips: list[Clip], scale: Scale, workers: int, batches: int, tokenizer) -> TrainLoader:
    """Pre-training's loader over ``clips`` (repeated to ``batches`` steps per epoch)."""
    reps = math.ceil(batches * scale.batch / len(clips))
    ds = ClipTextDataset(clips * reps, frames=K, sampling="rand", image_size=scale.size, two_views=True, name="bench")
    sampler = MixedBatchSampler([len(ds)], [1.0], scale.batch, seed=0)
    return TrainLoader(
        MixedDataset([ds], ["bench"]),
        sampler,
        Collate(tokenizer, L),
        num_workers=workers,
        max_bad_fraction=0.0,
        name="bench",
    )


def loader_rate(loader: TrainLoader) -> tuple[float, dict]:
    """Clips/s over one whole epoch, after a warm-up batch (workers started); and that batch."""
    try:
        warm = next(iter(loader))
        loader.set_position(1, 0)
        t, n = time.perf_counter(), 0
        for batch in loader:
            n += batch["video"].shape[0]
        return n / (time.perf_counter() - t), warm
    finally:
        loader.close()


def embedded_step_rate(steps: int) -> tuple[float, int]:
    """Measured clips/s of the embedded model's pre-training step on this machine (uint8 batch
    of params.yaml's shapes; forward + backward + AdamW, fp32) and its batch size."""
    from rap.model import RaPModel

    cfg = load_params(ROOT / "params.yaml").cfg
    torch.manual_seed(0)
    model = RaPModel(cfg.model, cfg.pretrain.loss).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    b, size, k = cfg.pretrain.optim.batch_size, cfg.data.image_size, cfg.data.frames_train
    g = torch.Generator().manual_seed(0)
    tok = model.tokenizer(
        [f"a red circle moves left in clip {i}" for i in range(b)],
        padding="max_length",
        truncation=True,
        max_length=cfg.model.text.max_len_train,
        return_tensors="pt",
    )
    batch = {
        "video": torch.randint(0, 256, (b, k, 3, size, size), generator=g, dtype=torch.uint8),
        "video_aug": torch.randint(0, 256, (b, k, 3, size, size), generator=g, dtype=torch.uint8),
        "input_ids": tok["input_ids"],
        "attention_mask": tok["attention_mask"],
        "video_index": torch.arange(b),
    }

    def step() -> None:
        model(batch, phase="pretrain")["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * b / (time.perf_counter() - t), b


def paper_step_flops() -> float:
    """FLOPs of one paper-scale pre-training step per rank (bench_step's count, this checkout)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_step

    return bench_step.count_flops()["after"]["flops"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--store-fps", type=float, default=2.0, help="store frame rate of part 1")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the jpeg store")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader workers of part 2")
    ap.add_argument("--batches", type=int, default=8, help="batches per timed epoch in part 2")
    ap.add_argument("--steps", type=int, default=4, help="timed steps of the embedded model")
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation of an H100 step")
    ap.add_argument("--gpu", default="H100", help="GPU whose bf16 peak (bench_step.PEAK_BF16_TFLOPS) is assumed")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        paths = make_clips(tmp, args.clips, args.seconds)
        took = time.perf_counter() - t
        print(f"generated {len(paths)} clips of {args.seconds:.0f} s at {SRC_W}x{SRC_H} in {took:.1f} s")
        t = time.perf_counter()
        live = [Clip(ClipRecord(p.stem, p, ("a clip",), "train"), decode.probe(p)) for p in paths]
        stored = write_stores(tmp, paths, SIZE, args.store_fps, args.quality)
        print(
            f"store extraction (npy + jpeg q{args.quality}) at {args.store_fps:g} fps: {time.perf_counter() - t:.1f} s"
        )
        size = {"video": np.mean([p.stat().st_size for p in paths])}
        size.update({fmt: np.mean([c.store.stat().st_size for c in clips]) for fmt, clips in stored.items()})
        kw = dict(frames=K, sampling="rand", image_size=SIZE, two_views=False)
        rates = {"live": rate(ClipTextDataset(live, **kw), args.passes)}
        rates.update({fmt: rate(ClipTextDataset(clips, **kw), args.passes) for fmt, clips in stored.items()})
        rates["plain"] = plain_decord(paths, args.passes)
        print_decoding(rates, size, args.quality)

        tokenizer = build_tokenizer(TextConfig(name="tiny", pretrained=False, tokenizer="builtin"))
        loader_rates: dict[tuple[str, str, int], float] = {}
        paper_batch = None
        for scale in SCALES:
            same = (scale.size, scale.store_fps) == (SIZE, args.store_fps)  # part 1's stores
            clips = stored if same else write_stores(tmp, paths, scale.size, scale.store_fps, args.quality)
            for fmt in ("npy", "jpeg"):
                for w in args.workers:
                    r, warm = loader_rate(train_loader(clips[fmt], scale, w, args.batches, tokenizer))
                    loader_rates[scale.name, fmt, w] = r
                    if scale.name == "paper":
                        paper_batch = warm
    step_rate, step_batch = embedded_step_rate(args.steps)
    flops = paper_step_flops()
    print_consumption(args, loader_rates, step_rate, step_batch, flops)
    print_bytes(paper_batch)


def print_decoding(rates: dict[str, float], size: dict[str, float], quality: int) -> None:
    names = {
        "live": "on-the-fly decode (rap.data)",
        "npy": "npy frame store (rap.data)",
        "jpeg": f"jpeg q{quality} store (rap.data)",
        "plain": "plain decord loop (no transform)",
    }
    per_clip = {"live": size["video"], "npy": size["npy"], "jpeg": size["jpeg"], "plain": size["video"]}
    print(f"\n1. Decoding, one worker, batch 1, K={K} at {SIZE} px, one view")
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


def print_consumption(args, rates: dict, step_rate: float, step_batch: int, flops: float) -> None:
    import bench_step

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"\n2. TrainLoader (one DataLoader per run, persistent workers, uint8, two views, K={K}, "
        f"tokenised captions), {cores} CPU core(s) here"
    )
    print(f"{'scale':<10}{'px':>5}{'batch':>7}{'store':>7}{'workers':>9}{'clips/s':>10}{'clips/s/worker':>16}")
    for scale in SCALES:
        for fmt in ("npy", "jpeg"):
            for w in args.workers:
                r = rates[scale.name, fmt, w]
                print(f"{scale.name:<10}{scale.size:>5}{scale.batch:>7}{fmt:>7}{w:>9}{r:>10.1f}{r / max(1, w):>16.1f}")
    print("(0 workers: loading in the training process itself; per worker = the whole rate)")

    print("\n3. Against the step's consumption")
    print(
        f"embedded model, this machine, MEASURED: {step_rate:.1f} clips/s (batch {step_batch}, forward + backward "
        f"+ AdamW, fp32, {torch.get_num_threads()} torch threads)"
    )
    for fmt in ("npy", "jpeg"):
        cells = ", ".join(f"{w} workers {rates['embedded', fmt, w] / step_rate:.1f}x" for w in args.workers)
        print(f"  loader / step, {fmt} store: {cells}")
    peak = bench_step.PEAK_BF16_TFLOPS[args.gpu] * 1e12
    step_s = flops / (args.mfu * peak)
    need = 30 / step_s
    print(
        f"paper scale, one {args.gpu} rank, COMPUTED (not measured): {flops / 1e12:.2f} TFLOP per step (counted "
        f"now, bench_step.count_flops) / ({args.mfu:.0%} MFU x {peak / 1e12:.0f} TFLOP/s bf16) = {step_s * 1e3:.0f} "
        f"ms per step -> {need:.0f} clips/s to feed"
    )
    one = min((w for w in args.workers if w > 0), default=None)
    for fmt in ("npy", "jpeg"):
        if one is None:
            break
        per_worker = max(rates["paper", fmt, w] / w for w in args.workers if w > 0)
        print(
            f"  {fmt} store: {per_worker:.1f} clips/s per worker (best measured) -> "
            f"{math.ceil(need / per_worker)} workers per GPU on cores like these "
            f"(loader / step with {one} worker(s) = {rates['paper', fmt, one] / need:.3f}x)"
        )


def print_bytes(batch: dict | None) -> None:
    if batch is None:
        return
    views = [batch[k] for k in ("video", "video_aug") if k in batch]
    shipped = sum(v.nbytes for v in views)
    as_float = sum(normalize_frames(v).nbytes for v in views)
    shape = tuple(views[0].shape)
    print(
        f"\n4. Bytes per step per rank at the paper scale (a collated batch: {len(views)} views {shape}), MEASURED: "
        f"uint8 {shipped / 1e6:.1f} MB, float32 {as_float / 1e6:.1f} MB; float32 / uint8 = {as_float / shipped:.2f}x"
    )


if __name__ == "__main__":
    main()
