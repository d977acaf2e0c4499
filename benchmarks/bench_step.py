"""Cost of one paper-scale pre-training step, today's code against this one (issue 12).

The paper's step: ViT-B/16 at 256 px on 4 frames, bert-base, 30 clips per rank, 64 ranks,
every term of eq. (10) on. Printed, side by side with ratios:

1. FLOPs per optimiser step per rank, counted with ``FlopCounterMode`` on the meta device (no
   memory, no compute: the whole paper-scale model on this CPU in seconds), for
   * today: the paper scale as it was (``grad_checkpointing: true``, second view through the
     online ViT);
   * after: the paper scale now (no checkpointing, second view through the momentum encoder);
   * release: rap's model in the released code's configuration (momentum ITC with queue,
     second view through the momentum encoder, the official RaCL weighting, no text second
     pass, no checkpointing), which runs the momentum ViT on both views;
   * as released: the released code runs its momentum ViT once, on the augmented view
     (rap_pretrain.py): the release's count less one momentum-ViT forward.
   Each printed by part (online ViT, online BERT, momentum ViT, momentum BERT, the rest), so
   that what each side counts is visible.
   The contrastive scores are counted for this rank's batch against itself (one process);
   against the 1,920 candidates of 64 ranks they add ~25 GFLOP, 0.1 % of the step.
2. Collectives per micro-batch (forward + backward) and the bytes each rank sends/receives
   through them, counted on real gloo ranks running the real ``RaPModel.forward`` at the
   paper's feature shapes (B = 30, N = 256 patches, L = 30 tokens, D = 256; narrow encoders:
   the collectives carry only embeddings and features of these shapes). The model's bytes grow as
   a * W + b * W^2 with the world size W (gathers of (B, ...) tensors grow as W; RaCL's
   partial log-sum-exps, one per global anchor from every rank, as W^2): fitted on 2 and 4
   ranks, checked on 3, and extrapolated to 64 (printed as extrapolated). "today" runs the code at ``--baseline-ref``
   (the main branch before this work), extracted with ``git archive``, through the same counter.
   DDP's gradient all-reduce (every trainable parameter once per step, whatever the world size)
   is measured on the same ranks through torch's Python comm hooks (fp32 ``allreduce_hook``, the
   twin of DDP's built-in all-reduce; ``bf16_compress_hook``, rap's ``optim.grad_comm: bf16``),
   as bytes per parameter, scaled to the paper model, and added to the step's total. The
   release's feature gathers are computed from its code (``release_gather_bytes``).
   Bytes count each collective's tensor once (all-gather: the gathered output; all-reduce:
   the tensor), not the transport's ring factor: the same accounting for both columns.
3. Host syncs per micro-batch in the model's forward + backward (value reads and
   data-dependent sizes, each a GPU stall), from the same run.
4. With CUDA only: clips/s and model FLOPs utilisation of the after step in bf16, and ITM
   re-rank throughput with and without the per-video key/value cache.

    python benchmarks/bench_step.py                 # all of it (about 5 minutes on 2 busy CPU cores)
    python benchmarks/bench_step.py --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REF = "22982fb"  # main before issue 12: features gathered, shape checks, 5 id gathers
B, K, SIZE, L, EMBED = 30, 4, 256, 30, 256
PAPER_RANKS = 64
FIT_WORLDS = (2, 4)
CHECK_WORLD = 3
# bf16 dense peak of the GPUs the figures are quoted for (TFLOP/s, vendor spec sheets).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


# --------------------------------------------------------------------------------------
# 1. FLOPs (meta device, this checkout)
# --------------------------------------------------------------------------------------


def _paper_model_cfg(vision_width: int | None = None, text_width: int | None = None):
    from rap.config import ModelConfig, TextConfig, VisionConfig

    vis = VisionConfig(timm_name="deit_base_patch16_224", pretrained=False, img_size=SIZE, patch_size=16)
    txt = TextConfig(name="bert-base-uncased", pretrained=False, tokenizer="builtin", max_len_train=L, max_len_eval=64)
    if vision_width is not None:  # narrow encoders for the collective counts
        vis = dataclasses.replace(vis, embed_dim=vision_width, depth=1, num_heads=1)
        txt = dataclasses.replace(
            txt, name="tiny", hidden_size=text_width, num_layers=1, num_heads=1, intermediate_size=2 * text_width
        )
    return ModelConfig(vision=vis, text=txt, embed_dim=EMBED)


def _step_variants():
    from rap.config import LossConfig

    today = LossConfig()  # every term, second view online
    after = dataclasses.replace(today, intra_video_view="momentum")
    release = dataclasses.replace(
        today,
        momentum=True,
        queue_size=57600,
        intra_video_view="momentum",
        racl_variant="official",
        intra_text_weight=0.0,
    )
    return {"today": (today, True), "after": (after, False), "release": (release, False)}


def _batch(device: torch.device | str, vocab: int, rank: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    if str(device) == "meta":
        rand = lambda *s: torch.empty(*s, device="meta")  # noqa: E731
        ids = torch.empty(B, L, dtype=torch.long, device="meta")
    else:
        g = torch.Generator().manual_seed(seed + rank)
        rand = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
        ids = torch.randint(5, vocab, (B, L), generator=g).to(device)
        ids[:, 0] = 2  # a [CLS]-like first token (with_prompt replaces it)
    return {
        "video": rand(B, K, 3, SIZE, SIZE),
        "video_aug": rand(B, K, 3, SIZE, SIZE),
        "input_ids": ids,
        "attention_mask": torch.ones(B, L, dtype=torch.long, device=device),
        "video_index": (torch.arange(B) + rank * B).to(device),
    }


# The parts of a step's forward, by the module that runs them (FlopCounterMode's module names;
# attributed in the forward only: in the backward the counter's module attribution overlaps).
PARTS = {
    "fwd: online ViT": "RaPModel.vision",
    "fwd: online BERT (ITC, ITM, LM passes)": "RaPModel.text",
    "fwd: momentum ViT (no grad)": "RaPModel.momentum.vision",
    "fwd: momentum BERT (no grad)": "RaPModel.momentum.text",
}
MOMENTUM_VIT = "fwd: momentum ViT (no grad)"


def _parts(forward: FlopCounterMode, backward: FlopCounterMode) -> dict[str, float]:
    counts = {name: float(sum(ops.values())) for name, ops in forward.get_flop_counts().items()}
    parts = {label: counts.get(module, 0.0) for label, module in PARTS.items()}
    parts["fwd: the rest (projections, heads, losses)"] = counts["Global"] - sum(parts.values())
    parts["bwd: everything with a gradient"] = float(backward.get_total_flops())
    return parts


def count_flops() -> dict[str, dict[str, float]]:
    """FLOPs of forward + backward of one step per rank, by part, and parameter counts, per
    variant. ``release`` is rap's model in the release's configuration, which runs the momentum
    ViT on both views (ITC distillation on view 1, intra-video on view 2); the released code
    runs it once, on the augmented view (its momentum ITC features come from it too), so
    ``release_as_released`` is that count less one momentum-ViT forward of one view."""
    from rap.model import RaPModel

    out = {}
    for name, (loss_cfg, checkpointing) in _step_variants().items():
        with torch.device("meta"):
            model = RaPModel(_paper_model_cfg(), loss_cfg).train()
        model.set_grad_checkpointing(checkpointing)
        batch = _batch("meta", len(model.tokenizer))
        if model.momentum is not None and loss_cfg.momentum:
            model.momentum.filled.fill_(model.momentum.video_queue.shape[0])  # a full queue (steady state)
        with FlopCounterMode(display=False) as forward:
            loss = model(batch, alpha=0.4)["loss"]
        with FlopCounterMode(display=False) as backward:
            loss.backward()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        out[name] = {
            "flops": float(forward.get_total_flops() + backward.get_total_flops()),
            "parts": _parts(forward, backward),
            "trainable_params": float(trainable),
            "vocab": float(len(model.tokenizer)),
        }
        if name == "release":
            with FlopCounterMode(display=False) as one_view, torch.no_grad():
                model.momentum.embed_video(batch["video"], 0.0)
            view = float(one_view.get_total_flops())
            parts = dict(out[name]["parts"])
            parts[MOMENTUM_VIT] -= view
            out["release_as_released"] = {**out[name], "flops": out[name]["flops"] - view, "parts": parts}
            out["release_as_released"]["momentum_view_flops"] = view
    return out


# --------------------------------------------------------------------------------------
# 2-3. Collectives and host syncs (gloo ranks; this checkout or the baseline's code)
# --------------------------------------------------------------------------------------


def _load_counter(path: Path):
    """rap/distributed.py of *this* checkout as a standalone module: the same counter for the
    baseline's code (which has none) and ours; it counts every torch.distributed call."""
    spec = importlib.util.spec_from_file_location("bench_step_counting", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def worker(out_path: Path, counter_path: Path) -> None:
    """One rank (run under torchrun): the model's forward + backward of one micro-batch."""
    import torch.distributed as dist

    from rap.config import LossConfig
    from rap.distributed import init_distributed
    from rap.model import RaPModel

    torch.set_num_threads(1)
    rank, world, _, device = init_distributed()
    counting = _load_counter(counter_path)
    torch.manual_seed(0)
    model = RaPModel(_paper_model_cfg(vision_width=32, text_width=32), LossConfig()).train()
    batch = _batch(device, len(model.tokenizer), rank)
    kwargs = {"gather": True}
    if "check_gather_shapes" in inspect.signature(model.forward).parameters:
        kwargs["check_gather_shapes"] = False  # the trainer pads text and keeps batches equal
    model(batch, **kwargs)["loss"].backward()  # warm-up (lazy initialisations)
    model.zero_grad(set_to_none=True)
    with counting.count_collectives() as c:
        model(batch, **kwargs)["loss"].backward()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out_path.write_text(
        json.dumps(
            {
                "world": world,
                "counts": c.counts,
                "bytes": c.bytes,
                "host_syncs": c.host_syncs,
                "trainable_params_narrow": trainable,
                "grad_allreduce_bytes": _grad_allreduce_bytes(model, batch, kwargs, counting),
            }
        )
    )
    dist.barrier()
    dist.destroy_process_group()


def _grad_allreduce_bytes(model, batch, kwargs, counting) -> dict[str, int]:
    """Bytes DDP's gradient all-reduce hands to the collective in one backward, per
    ``optim.grad_comm`` setting: ``fp32`` through torch's ``allreduce_hook`` (the Python twin of
    DDP's built-in all-reduce, whose C++ calls a Python counter cannot see), ``bf16`` through
    ``bf16_compress_hook`` (what rap registers for ``grad_comm: bf16``)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    hooks = {"fp32": default_hooks.allreduce_hook, "bf16": default_hooks.bf16_compress_hook}
    out = {}
    for mode, hook in hooks.items():
        ddp = DistributedDataParallel(model, find_unused_parameters=True)
        ddp.register_comm_hook(None, hook)
        model.zero_grad(set_to_none=True)
        with counting.count_collectives() as c:
            ddp(batch, **kwargs)["loss"].backward()
        out[mode] = c.bytes.get("all_reduce", 0) - _model_allreduce_bytes(model, batch, kwargs, counting)
    return out


def _model_allreduce_bytes(model, batch, kwargs, counting) -> int:
    """The model's own all-reduces in one forward + backward (taken out of the DDP count)."""
    model.zero_grad(set_to_none=True)
    with counting.count_collectives() as c:
        model(batch, **kwargs)["loss"].backward()
    return c.bytes.get("all_reduce", 0)


def _baseline_tree(ref: str, into: Path) -> Path:
    """The ``rap`` package at ``ref`` (git archive), for today's numbers."""
    if shutil.which("git") is None:
        raise SystemExit("bench_step: git is needed to extract the baseline code")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "rap"], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(
            f"bench_step: cannot read --baseline-ref {ref!r} from {ROOT}: {archive.stderr.decode().strip()}"
        )
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _run_ranks(world: int, code_root: Path, tmp: Path) -> dict:
    out = tmp / f"w{world}-{code_root.name}.json"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(PYTHONPATH=str(code_root), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={world}",
        str(Path(__file__).resolve()),
        "--worker",
        str(out),
        "--counter",
        str(ROOT / "rap" / "distributed.py"),
    ]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"bench_step: {world}-rank run of {code_root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())  # every rank does the same: rank 0's file (last writer wins)


def _fit(bytes_by_world: dict[int, int]) -> tuple[float, float]:
    """a, b of bytes(W) = a W + b W^2 through the two fitting worlds."""
    (w1, y1), (w2, y2) = [(w, bytes_by_world[w]) for w in FIT_WORLDS]
    b = (y2 / w2 - y1 / w1) / (w2 - w1)
    return y1 / w1 - b * w1, b


def count_traffic(baseline_ref: str) -> dict[str, dict]:
    """Per-micro-batch collectives, bytes (measured and extrapolated) and host syncs."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp_name:
        tmp = Path(tmp_name)
        base = _baseline_tree(baseline_ref, tmp / "baseline")
        for label, code in (("today", base), ("after", ROOT)):
            runs = {w: _run_ranks(w, code, tmp) for w in (*FIT_WORLDS, CHECK_WORLD)}
            total = {w: sum(r["bytes"].values()) for w, r in runs.items()}
            a, b = _fit(total)
            predicted = a * CHECK_WORLD + b * CHECK_WORLD**2
            out[label] = {
                "grad_allreduce_bytes": runs[2]["grad_allreduce_bytes"],
                "trainable_params_narrow": runs[2]["trainable_params_narrow"],
                "counts": runs[2]["counts"],
                "collectives": sum(runs[2]["counts"].values()),
                "host_syncs": runs[2]["host_syncs"],
                "bytes_by_world": total,
                "check_world": CHECK_WORLD,
                "check_predicted": predicted,
                "check_measured": total[CHECK_WORLD],
                "bytes_64": a * PAPER_RANKS + b * PAPER_RANKS**2,
            }
    return out


# --------------------------------------------------------------------------------------
# 4. GPU figures
# --------------------------------------------------------------------------------------


def _peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def gpu_figures(flops_after: float, steps: int) -> dict[str, float] | None:
    if not torch.cuda.is_available():
        return None
    from rap.model import RaPModel

    device = torch.device("cuda")
    loss_cfg, _ = _step_variants()["after"]
    torch.manual_seed(0)
    model = RaPModel(_paper_model_cfg(), loss_cfg).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    batch = _batch(device, len(model.tokenizer))

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / steps
    name = torch.cuda.get_device_name()
    peak = _peak_tflops(name)
    out = {"clips_per_s": B / per_step, "step_s": per_step, "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9}
    if peak is not None:
        out["mfu"] = flops_after / per_step / (peak * 1e12)
    out.update(_itm_throughput(model, device))
    return out


@torch.inference_mode()
def _itm_throughput(model, device: torch.device, videos: int = 8, texts_per_video: int = 16) -> dict[str, float]:
    """Re-rank pairs/s: each video with many texts (as the top-k lists give), bf16 autocast."""
    model.eval()
    g = torch.Generator().manual_seed(1)
    video = torch.randn(videos, K, 3, SIZE, SIZE, generator=g).to(device)
    ids = torch.randint(5, len(model.tokenizer), (videos * texts_per_video, L), generator=g).to(device)
    mask = torch.ones_like(ids)
    rows = torch.arange(videos, device=device).repeat_interleave(texts_per_video)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        feats = model.encode_video(video)
        timings = {}
        for label, call in (
            ("itm_pairs_per_s_cached", lambda: model.itm_scores(feats, ids, mask, video_rows=rows)),
            ("itm_pairs_per_s_per_pair", lambda: model.itm_scores(feats.index(rows), ids, mask)),
        ):
            call()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(5):
                call()
            torch.cuda.synchronize()
            timings[label] = 5 * len(rows) / (time.perf_counter() - start)
    model.train()
    return timings


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _row(label: str, today: float, after: float, unit: str = "") -> str:
    ratio = today / after if after else float("inf")
    return f"  {label:<58} {today:>12,.4g} {after:>12,.4g} {unit:<3} today/after {ratio:7.2f}x"


def release_gather_bytes(world: int) -> float:
    """Bytes the released code's collectives gather per step at ``world`` ranks (computed from its
    code, not measured): ``concat_all_gather`` of the momentum video and text features (B, 256)
    fp32 and of the sample ids (B,) int64, for the queue; its local terms gather nothing."""
    return world * (2 * B * EMBED * 4 + B * 8)


def _flops_table(flops: dict) -> list[str]:
    cols = ("today", "after", "release", "release_as_released")
    heads = ("today", "after", "release cfg", "as released")
    lines = ["TFLOPs per optimiser step per rank (fwd by part + bwd), counted on meta tensors: nothing computed"]
    lines.append(f"  {'':<46}" + "".join(f"{h:>13}" for h in heads))
    for part in flops["after"]["parts"]:
        lines.append(f"  {part:<46}" + "".join(f"{flops[c]['parts'][part] / 1e12:13.3f}" for c in cols))
    lines.append(f"  {'total':<46}" + "".join(f"{flops[c]['flops'] / 1e12:13.3f}" for c in cols))
    rel = flops["release_as_released"]
    lines += [
        "  today: grad_checkpointing on, second view through the online ViT (fwd+bwd); after: the paper",
        "  scale now (no checkpointing, second view through the momentum ViT); release cfg: rap's model in",
        "  the release's configuration (momentum ITC with queue, official RaCL, no text second pass), which",
        "  runs the momentum ViT on both views; as released: the released code runs it once, on the augmented",
        f"  view (rap_pretrain.py), so one momentum-ViT forward ({rel['momentum_view_flops'] / 1e12:.3f} TFLOPs) less.",
        f"  after / as released = {flops['after']['flops'] / rel['flops']:.3f}x, today / as released = "
        f"{flops['today']['flops'] / rel['flops']:.3f}x (vocabulary {int(flops['after']['vocab'])} words: "
        "the builtin tokenizer, not bert's 30,522)",
    ]
    return lines


def report(flops: dict, traffic: dict, gpu: dict | None) -> str:
    lines = ["Paper-scale step (ViT-B/16 256 px, 4 frames, bert-base, 30 clips/rank, every term of eq. 10)"]
    lines += _flops_table(flops)
    t, a = traffic["today"], traffic["after"]
    params = flops["after"]["trainable_params"]
    grad = {  # bytes per parameter measured on the narrow model's DDP run, times the paper model's params
        mode: a["grad_allreduce_bytes"][mode] / a["trainable_params_narrow"] * params for mode in ("fp32", "bf16")
    }
    extrapolated = f"extrapolated to {PAPER_RANKS} ranks from {FIT_WORLDS[0]}-{FIT_WORLDS[-1]}"
    lines.append("\nBytes per optimiser step per rank (grad_accum 1: one micro-batch per step)")
    lines.append(f"  {'':<58} {'today':>12} {'after':>12}")
    model_mb = (t["bytes_64"] / 1e6, a["bytes_64"] / 1e6)
    lines.append(_row(f"model collectives, {PAPER_RANKS} ranks ({extrapolated})", *model_mb, "MB"))
    for w in sorted(t["bytes_by_world"]):
        lines.append(
            _row(f"  measured on {w} gloo ranks", t["bytes_by_world"][w] / 1e6, a["bytes_by_world"][w] / 1e6, "MB")
        )
    for label, x in (("today", t), ("after", a)):
        err = abs(x["check_predicted"] - x["check_measured"]) / max(1.0, x["check_measured"])
        lines.append(f"  {label}: a W + b W^2 fit on {FIT_WORLDS} predicts {CHECK_WORLD} ranks to {err:.1e} (relative)")
    lines.append(_row("DDP gradient all-reduce, fp32 (same at any W)", grad["fp32"] / 1e6, grad["fp32"] / 1e6, "MB"))
    lines.append(
        _row(
            f"total, {PAPER_RANKS} ranks (extrapolated model + fp32 gradients)",
            (t["bytes_64"] + grad["fp32"]) / 1e6,
            (a["bytes_64"] + grad["fp32"]) / 1e6,
            "MB",
        )
    )
    lines.append(
        f"  release, as released: {release_gather_bytes(PAPER_RANKS) / 1e6:.2f} MB of feature gathers at {PAPER_RANKS} "
        f"ranks (computed from its concat_all_gather calls, not measured) + the same {grad['fp32'] / 1e6:,.0f} MB "
        f"of fp32 gradients = {(release_gather_bytes(PAPER_RANKS) + grad['fp32']) / 1e6:,.1f} MB; rap's gathers "
        f"{a['bytes_64'] / 1e6:.2f} MB"
    )
    narrow = a["grad_allreduce_bytes"]
    lines.append(
        f"  optim.grad_comm: bf16 (torch's bf16_compress_hook): {grad['bf16'] / 1e6:,.0f} MB of gradients instead of "
        f"{grad['fp32'] / 1e6:,.0f} MB; total per step {(a['bytes_64'] + grad['bf16']) / 1e6:,.0f} MB, "
        f"{(a['bytes_64'] + grad['fp32']) / (a['bytes_64'] + grad['bf16']):.2f}x less (measured on the narrow model's "
        f"2-rank DDP backward: {narrow['fp32']:,} vs {narrow['bf16']:,} bytes, {narrow['fp32'] / narrow['bf16']:.2f}x; "
        f"scaled to {params / 1e6:.0f}M parameters)"
    )
    lines.append(_row("collectives per micro-batch (model fwd+bwd)", t["collectives"], a["collectives"]))
    lines.append(f"    today {t['counts']}\n    after {a['counts']}")
    lines.append(_row("host syncs per micro-batch (model fwd+bwd)", t["host_syncs"], max(a["host_syncs"], 0)))
    lines.append(
        "  trainer (rap/training/loop.py, not measured here): today +1 all-reduce and +1 host sync per "
        "micro-batch (non-finite check) and +1 sync per step (grad norm); with rap.distributed.StepTerms "
        "1 all-reduce + 1 host sync per step for both"
    )
    if gpu is None:
        lines.append(
            "GPU figures (clips/s, MFU in bf16, ITM re-rank throughput): no CUDA device in this run, not measured"
        )
    else:
        lines.append(
            "GPU (after step, bf16 autocast, one device, no DDP): " + ", ".join(f"{k}={v:.4g}" for k, v in gpu.items())
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="git ref of today's code (default %(default)s)")
    parser.add_argument("--gpu-steps", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--counter", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.counter)
        return
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    flops = count_flops()
    traffic = count_traffic(args.baseline_ref)
    gpu = gpu_figures(flops["after"]["flops"], args.gpu_steps)
    print(report(flops, traffic, gpu))
    if args.json is not None:
        args.json.write_text(json.dumps({"flops": flops, "traffic": traffic, "gpu": gpu}, indent=1))


if __name__ == "__main__":
    main()
