"""Cost of RaCL (paper eqs. 4-8, both directions, redundancy included) against ITC alone
(eqs. 2-3), at the paper's per-GPU shapes: B = 30, N = 256 patches, L = 30 tokens, D = 256.

Reports forward + backward time (median over ``--reps`` after ``--warmup``) and peak memory:
on CUDA ``torch.cuda.max_memory_allocated`` above the inputs; on the CPU the peak bytes of
live tensors created during the step, tracked op by op with a dispatch mode (the CPU has no
allocator statistics; this ignores allocator overhead and kernel-internal scratch).

    python benchmarks/bench_racl.py                      # CPU, fp32
    python benchmarks/bench_racl.py --device cuda --json bench.json

The target checked is "RaCL <= 3x ITC" (time and memory). Both losses cost milliseconds or
less; the encoders (a ViT-B/16 forward on 4 frames x 30 clips) cost orders of magnitude more.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rap.losses import itc_loss, racl_loss, racl_loss_official  # noqa: E402


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the ``with`` block and alive at an op
    boundary (forward and backward ops both pass through the dispatcher). Storages of the
    ``existing`` tensors (the inputs) are not counted when views of them pass by."""

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.existing = {t.untyped_storage().data_ptr() for t in existing}
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _collect(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._collect()
        out = func(*args, **(kwargs or {}))
        self._collect()
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in self.existing:
                continue
            if key in self.live and not self.live[key][0].expired():
                continue  # a view of a storage already counted
            if key in self.live:
                self.current -= self.live.pop(key)[1]
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def make_inputs(
    batch: int, patches: int, tokens: int, dim: int, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def unit(*shape: int) -> torch.Tensor:
        x = F.normalize(torch.randn(*shape, generator=gen), dim=-1)
        return x.to(device=device, dtype=dtype).requires_grad_(True)

    # Ragged captions (WebVid captions are mostly shorter than the 30-token cap).
    lengths = torch.randint(tokens // 3, tokens + 1, (batch,), generator=gen)
    token_mask = (torch.arange(tokens)[None, :] < lengths[:, None]).to(device)
    return dict(
        video_emb=unit(batch, dim),
        patch_feats=unit(batch, patches, dim),
        text_emb=unit(batch, dim),
        token_feats=unit(batch, tokens, dim),
        token_mask=token_mask,
        tau=torch.tensor(0.07, device=device, requires_grad=True),
    )


def losses(x: dict[str, torch.Tensor]) -> dict[str, Callable[[], torch.Tensor]]:
    racl_args = (x["video_emb"], x["patch_feats"], x["text_emb"], x["token_feats"], x["token_mask"], x["tau"])
    return {
        "itc": lambda: sum(itc_loss(x["video_emb"], x["text_emb"], x["tau"])),
        "racl": lambda: sum(racl_loss(*racl_args)),
        "racl_official": lambda: sum(racl_loss_official(*racl_args)),
    }


def step(fn: Callable[[], torch.Tensor], x: dict[str, torch.Tensor]) -> None:
    for t in x.values():
        t.grad = None
    fn().backward()


def time_all(
    fns: dict[str, Callable[[], torch.Tensor]], x: dict[str, torch.Tensor], device: torch.device, warmup: int, reps: int
) -> dict[str, list[float]]:
    """ms of forward + backward per repetition. The losses take turns within each repetition,
    so that load from other processes on a shared machine hits all of them alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            step(fn, x)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            step(fn, x)
            sync()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def peak_mib(fn: Callable[[], torch.Tensor], x: dict[str, torch.Tensor], device: torch.device) -> float:
    """Peak memory of one forward + backward above the inputs, MiB."""
    for t in x.values():
        t.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(fn, x)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with PeakTensorMemory(existing=x.values()) as tracker:
            step(fn, x)
        peak = tracker.peak
    return peak / 2**20


def measured_flops(fn: Callable[[], torch.Tensor]) -> int:
    """Forward + backward FLOPs of one call, counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        fn().backward()
    return counter.get_total_flops()


def encoder_flops(batch: int, frames: int, img_size: int, tokens: int) -> int:
    """Forward + backward FLOPs of the paper's encoders for one per-rank batch: ViT-B/16 on
    ``batch * frames`` frames at ``img_size`` and BERT-base on ``batch`` captions of ``tokens``
    tokens. Built on the meta device: shapes only, no memory, no weights."""
    import timm
    from transformers import BertConfig, BertModel

    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", img_size=img_size, num_classes=0)
        bert = BertModel(BertConfig())
        images = torch.randn(batch * frames, 3, img_size, img_size)
        ids = torch.zeros(batch, tokens, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        vit(images).sum().backward()
        bert(input_ids=ids).last_hidden_state.sum().backward()
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=30, help="per-rank batch B (paper: 30)")
    ap.add_argument("--patches", type=int, default=256, help="N (paper: 16x16 patches at 256 px)")
    ap.add_argument("--tokens", type=int, default=30, help="L (paper: 30 in pre-training)")
    ap.add_argument("--dim", type=int, default=256, help="D, the shared space (paper: 256)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--world", type=int, default=64, help="ranks for the gathered-memory estimate (paper: 64)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    x = make_inputs(args.batch, args.patches, args.tokens, args.dim, device, dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    fns = losses(x)
    times = time_all(fns, x, device, args.warmup, args.reps)
    results = {name: (statistics.median(times[name]), peak_mib(fn, x, device)) for name, fn in fns.items()}
    itc_ms, itc_mib = results["itc"]
    input_mib = sum(t.numel() * t.element_size() for t in x.values()) / 2**20

    print(
        f"RaCL vs ITC, forward + backward: B={args.batch} N={args.patches} L={args.tokens} D={args.dim} "
        f"{args.dtype} on {device} ({torch.get_num_threads()} threads), median of {args.reps} after "
        f"{args.warmup} warm-up"
    )
    itc_min = min(times["itc"])
    print(f"{'loss':<15}{'median ms':>10}{'x ITC':>8}{'min ms':>9}{'x ITC':>8}{'peak MiB':>10}{'x ITC':>8}")
    for name, (ms, mib) in results.items():
        best = min(times[name])
        print(
            f"{name:<15}{ms:>10.3f}{ms / itc_ms:>8.1f}{best:>9.3f}{best / itc_min:>8.1f}{mib:>10.3f}"
            f"{mib / max(itc_mib, 1e-9):>8.1f}"
        )
    print(
        f"(inputs: {input_mib:.2f} MiB, of which patch features {x['patch_feats'].numel() * 4 / 2**20:.2f}; "
        "any loss on patch features needs at least their gradient, which ITC never touches)"
    )
    racl_ms, racl_mib = results["racl"]
    b, n, l, d = args.batch, args.patches, args.tokens, args.dim
    itc_macs = 2 * b * b * d  # eqs. (2)-(3), forward
    racl_macs = b * n * l * d + b * b * (n + l) * d  # eq. (4) matrix + eqs. (7)-(8) scores, forward
    print(
        f"forward multiply-adds: ITC {itc_macs / 1e6:.2f} M, RaCL {racl_macs / 1e6:.1f} M "
        f"({racl_macs / itc_macs:.0f}x): a loss that reads every patch and token cannot stay within a small "
        "multiple of one over the [CLS] embeddings; ITC's time is mostly per-op overhead."
    )
    racl_flops = measured_flops(fns["racl"])
    enc_flops = encoder_flops(args.batch, 4, 16 * int(args.patches**0.5), args.tokens)
    print(
        f"FLOPs forward + backward: RaCL {racl_flops / 1e9:.2f} G vs the encoders (ViT-B/16 on {args.batch}x4 "
        f"frames + BERT-base) {enc_flops / 1e12:.2f} T: RaCL = {racl_flops / enc_flops:.2e} of the encoders' step"
    )
    time_ok, mem_ok = racl_ms <= 3 * itc_ms, racl_mib <= 3 * itc_mib
    print(
        f"target RaCL <= 3x ITC: time {racl_ms / itc_ms:.1f}x -> {'holds' if time_ok else 'NOT met'}; "
        f"memory {racl_mib / max(itc_mib, 1e-9):.1f}x -> {'holds' if mem_ok else 'NOT met'}"
    )
    print(
        f"absolute: RaCL adds {racl_ms - itc_ms:.2f} ms and {racl_mib - itc_mib:.2f} MiB per step; "
        "negligible next to the ViT-B/16 + BERT-base encoders (seconds per step on this CPU)."
    )
    # With gather=True the largest tensor is the t2v score matrix (B, world*B, N) (fp32) and its grad.
    gathered = args.batch * args.world * args.batch * args.patches * 4 / 2**20
    print(
        f"gathered over {args.world} ranks: t2v scores (B, {args.world}*B, N) = {gathered:.1f} MiB fp32 per rank "
        f"(x2-3 with gradients and masks), v2t {gathered * args.tokens / args.patches:.1f} MiB."
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "shape": {"B": args.batch, "N": args.patches, "L": args.tokens, "D": args.dim},
                    "device": str(device),
                    "dtype": args.dtype,
                    "ms_median": {k: v[0] for k, v in results.items()},
                    "ms_min": {k: min(v) for k, v in times.items()},
                    "peak_mib": {k: v[1] for k, v in results.items()},
                    "input_mib": input_mib,
                    "racl_flops": racl_flops,
                    "encoder_flops": enc_flops,
                    "time_ratio_racl_itc": racl_ms / itc_ms,
                    "time_ratio_min_racl_itc": min(times["racl"]) / itc_min,
                    "forward_macs": {"itc": itc_macs, "racl": racl_macs},
                    "mem_ratio_racl_itc": racl_mib / max(itc_mib, 1e-9),
                    "target_3x_time_holds": time_ok,
                    "target_3x_memory_holds": mem_ok,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
