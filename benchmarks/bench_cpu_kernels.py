"""What pinning the CPU kernels costs (rap/cpu_kernels.py): step time of the embedded model's
full pre-training step with ``cpu.kernels: avx2`` (ATen AVX2, MKL CNR AVX2, oneDNN capped at
AVX2 and its convolutions off) against ``native`` (the host's best kernels, e.g. AVX-512).

The instruction set is fixed when torch first runs a kernel, so each setting runs in its own
process; the processes alternate (pinned, native, pinned, ...) so that load drift on a shared
machine hits both alike. Each process times ``--reps`` steps after ``--warmup`` (rap.speed's
step: forward + backward + AdamW at the embedded batch) and reports the median; the ratio is
the median over rounds of pinned / native.

    .venv/bin/python benchmarks/bench_cpu_kernels.py [--rounds 3] [--reps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(kernels: str, threads: int, warmup: int, reps: int) -> None:
    from rap import cpu_kernels
    from rap.config import load_params

    params = load_params(ROOT / "params.yaml", {"cpu.kernels": kernels, "cpu.threads": threads})
    cpu_kernels.pin(params.cfg.cpu.kernels, params.cfg.cpu.threads)
    from rap.speed import measure_mask_speed

    os.environ["RAP_TRACKING"] = "0"
    result = measure_mask_speed(params, [0.0], warmup=warmup, reps=reps)
    print(json.dumps({"median_s": result["by_ratio"]["0.0"]["median_s"], "cpu": cpu_kernels.provenance()}))


def run_child(kernels: str, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATEN_", "MKL_", "ONEDNN_", "OMP_", "RAP_CPU"))}
    cmd = [sys.executable, __file__, "--child", kernels, "--threads", str(args.threads)]
    cmd += ["--warmup", str(args.warmup), "--reps", str(args.reps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=["avx2", "native"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.threads, args.warmup, args.reps)
        return
    times: dict[str, list[float]] = {"avx2": [], "native": []}
    cpu = {}
    for i in range(args.rounds):
        for kernels in ("avx2", "native"):
            res = run_child(kernels, args)
            times[kernels].append(res["median_s"])
            cpu[kernels] = res["cpu"]
            step_ms, isa = res["median_s"] * 1e3, res["cpu"]["aten_capability"]
            print(f"round {i + 1}: {kernels:6s} step {step_ms:7.1f} ms  ({isa})")
    ratios = [p / n for p, n in zip(times["avx2"], times["native"])]
    print(f"\npinned: {cpu['avx2']}\nnative: {cpu['native']}")
    print(
        f"step time pinned / native: median {statistics.median(ratios):.3f}x "
        f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}); "
        f"medians {statistics.median(times['avx2']) * 1e3:.1f} ms vs {statistics.median(times['native']) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
