"""Host memory of the paper-scale clip index and cost of the batch sampler (issue 17, part 4):
today's representation (main before the columnar index: a list of ``Clip`` objects built from
``read_index``, and a list of ``(clip, caption)`` tuples per dataset; a full permutation of the
source per step) against the new one (:class:`rap.data.clipindex.ClipIndex` from
``load_clips``; :class:`rap.data.mixing.MixedBatchSampler` with its per-epoch permutation
cache).

The index is synthetic: 2.5M WebVid clips + 3.3M CC3M images written as ``index/<dataset>.jsonl``
with WebVid/CC3M-like ids, paths (page directories, img2dataset shards), frame-store names
(:func:`rap.data.store.store_relpath`), probe values and captions (~12 words for WebVid, ~10 for
CC3M); no media. Each representation is loaded in a fresh process, which reports:

* RSS: the index's part (after loading minus before) and the whole process (VmRSS; VmHWM is the
  peak while loading); the process imports torch, as a rank does (a rank's CUDA context is not
  counted here);
* a forked DataLoader worker: it reads every item as the dataset does (the clip, its captions,
  path, store file and probe info), runs ``gc.collect()``, and reports its Private_Dirty
  (/proc/<pid>/smaps_rollup); a worker forked before loading gives the interpreter's own part;
* sampler: milliseconds per step (batch 64 per rank, 64 ranks, the paper's mixing), median over
  ``--steps`` steps, old and new, whose batches must be identical.

Today's representation needs ~1.4 kB per clip: at the full 5.8M (8+ GB) it does not fit
comfortably on a shared machine, so ``--old-fraction`` loads that share of each dataset and the
printout extrapolates linearly (marked). Every figure comes from one run on this machine.

    python benchmarks/bench_index_memory.py [--webvid 2500000] [--cc3m 3300000] [--old-fraction 0.1]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.legacy_index import forked_private_kb, old_batch  # noqa: E402  (the references the tests check)

TARGETS = {"rss_mb": 1024.0, "worker_mb": 100.0, "sampler_ms": 1.0}  # issue 17, point 4
WORLD, BATCH = 64, 64
ROOT_NAME = "data"  # index paths are relative to the data root; the loaders make them absolute


# ---------------------------------------------------------------------------------------------
# The synthetic index
# ---------------------------------------------------------------------------------------------


def _vocab(rng: np.random.Generator, n: int = 8000) -> list[str]:
    """Words of 2-10 letters (mean ~5, English-like)."""
    lengths = np.clip(rng.poisson(4.6, n), 2, 10)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    return [letters[rng.integers(0, 26, k)].tobytes().decode() for k in lengths]


def _captions(rng: np.random.Generator, vocab: list[str], n: int, mean_words: float) -> list[str]:
    words = np.clip(rng.poisson(mean_words, n), 3, 40)
    picks = rng.integers(0, len(vocab), int(words.sum()))
    out, at = [], 0
    for k in words.tolist():
        out.append(" ".join(vocab[j] for j in picks[at : at + k]).capitalize())
        at += k
    return out


def _store_name(dataset: str, rel: str, vid: str) -> str:
    from rap.data.store import store_relpath

    digest = hashlib.sha1(rel.encode()).hexdigest()  # stands in for the clip file's content digest
    return store_relpath(dataset, Path(rel), vid, 224, 2.0, fmt="jpeg", quality=90, source_digest=digest)


def write_index(root: Path, dataset: str, n: int, seed: int, chunk: int = 100_000) -> None:
    """``root/index/<dataset>.jsonl`` with ``n`` clips as ``rap extract`` writes them."""
    rng = np.random.default_rng(seed)
    vocab = _vocab(rng)
    path = root / "index" / f"{dataset}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            if dataset == "webvid":
                caps = _captions(rng, vocab, m, 12.0)
                ids = rng.integers(1_000_000, 1_100_000_000, m).tolist()
                fps = rng.choice([25.0, 30000 / 1001, 30.0], m).tolist()
                secs = rng.uniform(5.0, 30.0, m).tolist()
            else:
                caps = _captions(rng, vocab, m, 10.0)
                sizes = rng.integers(200, 1500, (m, 2)).tolist()
            lines = []
            for k in range(m):
                i = start + k
                if dataset == "webvid":
                    vid = str(ids[k])
                    page = i // 2000 * 50  # 50 result pages of ~40 videos per directory
                    rel = f"raw/webvid/videos/{page + 1:06d}_{page + 50:06d}/{vid}.mp4"
                    nf = int(secs[k] * fps[k])
                    probe = {"num_frames": nf, "fps": fps[k], "duration": nf / fps[k], "width": 596, "height": 336}
                else:
                    vid = f"{i:09d}"
                    rel = f"raw/cc3m/images/{i // 10_000:05d}/{vid}.jpg"  # img2dataset: 10k per shard
                    probe = {"num_frames": 1, "fps": 1.0, "duration": 0.0, "width": sizes[k][0], "height": sizes[k][1]}
                row = {"video_id": vid, "path": rel, "captions": [caps[k]], "split": "train"}
                row |= {"kind": "video" if dataset == "webvid" else "image", **probe}
                row["store"] = _store_name(dataset, rel, vid)
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            f.write("".join(lines))


# ---------------------------------------------------------------------------------------------
# Measurements (each in a fresh process)
# ---------------------------------------------------------------------------------------------


def _status_kb(key: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status: no {key}")


def _old_load(root: Path, dataset: str) -> tuple[list, list]:
    """main's load_clips + ClipTextDataset before the columns: Clip objects and item tuples."""
    from rap.data.clipindex import Clip  # the same frozen dataclass main had in datasets.py
    from rap.data.records import read_index

    clips = [Clip(e.record, e.info, root / e.store if e.store else None) for e in read_index(root, dataset, "train")]
    return clips, [(c, -1) for c in range(len(clips))]


def _touch_old(sources) -> None:
    for clips, items in sources:
        for i in range(len(items)):
            c, _ = items[i]
            clip = clips[c]
            rec, _ = clip.record, (clip.store, clip.info)
            _ = (rec.captions[0], rec.path, rec.kind)


def _touch_new(sources) -> None:
    for ds in sources:
        for i in range(len(ds)):
            c, _ = ds.item(i)
            clip = ds.clips[c]
            rec, _ = clip.record, (clip.store, clip.info)
            _ = (rec.captions[0], rec.path, rec.kind)


def measure(kind: str, root: Path) -> dict:
    """Load both datasets the ``kind`` way; RSS, forked worker's private memory, load time."""
    import torch  # noqa: F401  (a rank has it; its pages are part of every worker's baseline)

    from rap.config import DataConfig
    from rap.data.datasets import ClipTextDataset, load_clips

    gc.collect()
    control_kb = forked_private_kb(lambda: None)[0]
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    if kind == "old":
        sources = [_old_load(root, d) for d in ("webvid", "cc3m")]
        n = sum(len(c) for c, _ in sources)
    else:
        cfg = DataConfig(root=str(root), frame_store=True)
        kw = dict(frames=4, sampling="rand", image_size=224, two_views=True)
        sources = [ClipTextDataset(load_clips(d, "train", cfg), name=d, **kw) for d in ("webvid", "cc3m")]
        n = sum(len(ds) for ds in sources)
    load_s = time.perf_counter() - t0
    gc.collect()
    after, peak = _status_kb("VmRSS"), _status_kb("VmHWM")
    t0 = time.perf_counter()
    worker_kb, _ = forked_private_kb(lambda: (_touch_old if kind == "old" else _touch_new)(sources))
    touch_s = time.perf_counter() - t0
    return {
        "n": n,
        "rss_before_mb": before / 1024,
        "rss_after_mb": after / 1024,
        "rss_peak_mb": peak / 1024,
        "index_mb": (after - before) / 1024,
        "worker_mb": worker_kb / 1024,
        "worker_control_mb": control_kb / 1024,
        "worker_index_mb": (worker_kb - control_kb) / 1024,
        "load_s": load_s,
        "touch_s": touch_s,
    }


def sampler_costs(sizes: list[int], steps: int) -> dict:
    """ms per step of the old and the new batch computation (64 per rank, 64 ranks)."""
    from rap.config import load_params
    from rap.data.mixing import MixedBatchSampler

    pre = load_params(Path(__file__).resolve().parents[1] / "params.yaml", {"scale": "paper"}).cfg.pretrain
    s = MixedBatchSampler(
        sizes, pre.source_weights, BATCH, seed=0, rank=WORLD // 2, world_size=WORLD, mixing=pre.mixing
    )
    sched = s.schedule(0)
    steps = min(steps, s.steps_per_epoch)
    old_ms, new_ms, batches = [], [], []
    for t in range(steps):
        t0 = time.perf_counter()
        batches.append(old_batch(s, 0, t, sched))
        old_ms.append((time.perf_counter() - t0) * 1e3)
    t_epoch = time.perf_counter()
    for t, batch in zip(range(steps), iter(s)):
        new_ms.append((time.perf_counter() - t_epoch) * 1e3)
        if batch != batches[t]:
            raise AssertionError(f"step {t}: the new sampler's batch differs from the old one")
        t_epoch = time.perf_counter()
    return {
        "mixing": pre.mixing,
        "steps": steps,
        "steps_per_epoch": s.steps_per_epoch,
        "old_median_ms": statistics.median(old_ms),
        "new_median_ms": statistics.median(new_ms),
        "new_mean_ms": statistics.fmean(new_ms),  # includes the first permutation of each source
        "new_max_ms": max(new_ms),
    }


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _child(args: list[str]) -> dict:
    env = os.environ | {"PYTHONHASHSEED": "0"}
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _verdict(value: float, target: float) -> str:
    return f"{'met' if value <= target else 'NOT met'} (target <= {target:g})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--webvid", type=int, default=2_500_000)
    ap.add_argument("--cc3m", type=int, default=3_300_000)
    ap.add_argument("--old-fraction", type=float, default=0.1, help="share of the index loaded the old way")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--measure", choices=("old", "new"), help=argparse.SUPPRESS)
    ap.add_argument("--sampler", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.root)))
        return
    if args.sampler:
        print(json.dumps(sampler_costs([args.webvid, args.cc3m], args.steps)))
        return

    f = args.old_fraction
    with tempfile.TemporaryDirectory(prefix="bench_index_") as tmp:
        full, part = Path(tmp) / "full" / ROOT_NAME, Path(tmp) / "part" / ROOT_NAME
        t0 = time.perf_counter()
        write_index(full, "webvid", args.webvid, seed=1)
        write_index(full, "cc3m", args.cc3m, seed=2)
        write_index(part, "webvid", round(args.webvid * f), seed=1)
        write_index(part, "cc3m", round(args.cc3m * f), seed=2)
        gen_s = time.perf_counter() - t0
        index_mb = sum(p.stat().st_size for p in (full / "index").iterdir()) / 2**20
        new = _child(["--measure", "new", "--root", str(full)])
        old = _child(["--measure", "old", "--root", str(part)])
    samp = _child(["--sampler", "--webvid", str(args.webvid), "--cc3m", str(args.cc3m), "--steps", str(args.steps)])

    n, scale = new["n"], new["n"] / old["n"]
    ex = f"(extrapolated x{scale:.2f} from {old['n']:,} clips)" if scale != 1 else ""
    old_index, old_worker = old["index_mb"] * scale, old["worker_index_mb"] * scale
    print(f"synthetic index: {args.webvid:,} WebVid + {args.cc3m:,} CC3M = {n:,} clips; JSONL {index_mb:,.0f} MiB")
    print(f"  (written in {gen_s:.0f} s; one process per measurement; this machine: {os.cpu_count()} CPUs, shared)")
    print("\nRSS of one rank's index (after loading - before; the process imports torch):")
    print(f"  old  {old_index:9,.0f} MiB  {old['index_mb'] * 1024**2 / old['n']:7,.0f} B/clip  {ex}")
    print(f"  new  {new['index_mb']:9,.0f} MiB  {new['index_mb'] * 1024**2 / n:7,.0f} B/clip")
    print(f"  ratio old/new {old_index / new['index_mb']:.1f}x")
    print(
        f"  new process: VmRSS {new['rss_after_mb']:,.0f} MiB (before loading {new['rss_before_mb']:,.0f}), "
        f"peak while loading {new['rss_peak_mb']:,.0f} MiB; load {new['load_s']:.0f} s (old: {old['load_s']:.0f} s "
        f"for {old['n']:,})"
    )
    print("\nForked loader worker, private memory after reading every item + gc.collect():")
    print(
        f"  control (a worker forked before loading): old {old['worker_control_mb']:.0f} MiB, new "
        f"{new['worker_control_mb']:.0f} MiB"
    )
    print(f"  old  {old_worker:9,.0f} MiB beyond control  {ex}")
    print(
        f"  new  {new['worker_index_mb']:9,.1f} MiB beyond control; worker total {new['worker_mb']:,.0f} MiB "
        f"(read {n:,} items in {new['touch_s']:.0f} s)"
    )
    print(f"  ratio old/new {old_worker / max(new['worker_index_mb'], 1e-3):.0f}x")
    print(
        f"\nSampler, ms per step ({samp['mixing']} mixing, batch {BATCH} per rank, {WORLD} ranks, "
        f"{samp['steps']} steps of {samp['steps_per_epoch']} per epoch; batches checked identical):"
    )
    print(f"  old  median {samp['old_median_ms']:.2f}")
    print(
        f"  new  median {samp['new_median_ms']:.3f}  mean {samp['new_mean_ms']:.3f} (with the epoch's first "
        f"permutations)  max {samp['new_max_ms']:.1f}"
    )
    print(f"  ratio old/new (median) {samp['old_median_ms'] / samp['new_median_ms']:.0f}x")
    print("\nTargets (issue 17, point 4):")
    print(f"  index RSS per rank {new['index_mb']:,.0f} MiB: {_verdict(new['index_mb'], TARGETS['rss_mb'])}")
    print(
        f"  forked worker private {new['worker_mb']:,.0f} MiB total ({new['worker_index_mb']:.1f} from the index): "
        f"{_verdict(new['worker_mb'], TARGETS['worker_mb'])}"
    )
    ms = samp["new_median_ms"]
    print(f"  sampler {ms:.3f} ms/step (median): {_verdict(ms, TARGETS['sampler_ms'])}")


if __name__ == "__main__":
    main()
