"""MAC efficiency: training-step time and FLOPs at r_v = 0.75 vs r_v = 0 on the same model.

Two models, each built from the config (random init, no downloads), each running the full
pre-training step of its scale (every term of eq. 10 its params.yaml block switches on: ITC,
RaCL, ITM, LM, the intra-modal terms, the momentum encoder where configured):

* ``small``: the embedded model and pre-training loss of params.yaml, batch 16 x 4 frames at
  64 px (the embedded training setting);
* ``base``: ViT-B/16 at 256 px + BERT-base (paper sizes, ``vision.timm_name``
  vit_base_patch16_224 with img_size 256, BERT 768/12/12/3072) with the paper scale's
  pre-training loss, batch 2 x 4 frames (30 per rank at the paper scale: a CPU cannot).

What is measured, and how:

* step time: forward + backward + AdamW step on this device with real tensors, median of
  ``--reps`` after ``--warmup``, the two ratios interleaved step by step;
* FLOPs: forward + backward of the same step, counted by ``FlopCounterMode`` on meta tensors
  (a meta copy of the model and batch: nothing computed). Counting on real CPU tensors records
  0 for attention (``scaled_dot_product_attention`` dispatches to a CPU kernel the counter has no
  formula for); on meta it is counted. Matmul-type ops only: element-wise work and the optimiser
  are not in the count.

    .venv/bin/python benchmarks/bench_mac.py [--which small base] [--reps 5] [--base-reps 1] [--device cpu]

On 2 free CPU cores a base step takes ~25-55 s unmasked, so the default run is ~2-4 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from rap.config import LossConfig, ModelConfig, TextConfig, VisionConfig, load_params
from rap.model import RaPModel
from rap.speed import synthetic_batch

ROOT = Path(__file__).resolve().parents[1]


def configs(which: str) -> tuple[ModelConfig, LossConfig, int, int]:
    """(model cfg, loss cfg, batch, image size)."""
    params = load_params(ROOT / "params.yaml", {"scale": "embedded" if which == "small" else "paper"})
    if which == "small":
        return (
            params.cfg.model,
            params.cfg.pretrain.loss,
            params.cfg.pretrain.optim.batch_size,
            params.cfg.model.vision.img_size,
        )
    model = dataclasses.replace(
        params.cfg.model,
        embed_dim=256,
        vision=VisionConfig(timm_name="vit_base_patch16_224", pretrained=False, img_size=256, patch_size=16),
        text=TextConfig(
            name="bert-base",
            pretrained=False,
            tokenizer="builtin",
            hidden_size=768,
            num_layers=12,
            num_heads=12,
            intermediate_size=3072,
        ),
    )
    return model, params.cfg.pretrain.loss, 2, 256


def make_batch(model: RaPModel, batch: int, frames: int, size: int, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in synthetic_batch(model, batch, frames, size).items()}


def count_flops(model_cfg: ModelConfig, loss_cfg: LossConfig, batch: dict, ratio: float) -> float:
    """GFLOPs of forward + backward of one step at mask ratio ``ratio``, on meta tensors."""
    with torch.device("meta"):
        model = RaPModel(dataclasses.replace(model_cfg, mask_video=ratio), loss_cfg).train()
    meta_batch = {k: v.to("meta") for k, v in batch.items()}
    with FlopCounterMode(display=False) as counter:
        model(meta_batch, phase="pretrain")["loss"].backward()
    return counter.get_total_flops() / 1e9


def step(model: RaPModel, opt: torch.optim.Optimizer, batch: dict) -> list[str]:
    """One training step; returns the loss terms computed."""
    opt.zero_grad(set_to_none=True)
    out = model(batch, phase="pretrain")
    out["loss"].backward()
    opt.step()
    model.clamp_temperature()
    return sorted(out)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(which: str, ratios: tuple[float, ...], warmup: int, reps: int, device: torch.device) -> dict:
    model_cfg, loss_cfg, batch_size, size = configs(which)
    torch.manual_seed(0)
    model = RaPModel(model_cfg, loss_cfg).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = make_batch(model, batch_size, 4, size, device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops = {r: count_flops(model_cfg, loss_cfg, batch, r) for r in ratios}
    times = {r: [] for r in ratios}
    # Ratios alternate step by step so that load drift on a shared machine hits both alike.
    for i in tqdm(range(warmup + reps), desc=f"{which}: steps (each ratio)"):
        for r in ratios:
            model.cfg = dataclasses.replace(model.cfg, mask_video=r)
            sync(device)
            t0 = time.perf_counter()
            terms = step(model, opt, batch)
            sync(device)
            if i >= warmup:
                times[r].append(time.perf_counter() - t0)
    results = {r: {"step_s": statistics.median(times[r]), "gflops": flops[r]} for r in ratios}
    return {"params_m": n_params / 1e6, "batch": f"{batch_size}x4x{size}px", "terms": terms, "by_ratio": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--which", nargs="+", default=["small", "base"], choices=["small", "base"])
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per ratio (>= 1)")
    ap.add_argument("--reps", type=int, default=5, help="timed steps per ratio, small model")
    ap.add_argument("--base-reps", type=int, default=1, help="timed steps per ratio, base model (~1 min each on CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    for which in args.which:
        start = time.perf_counter()
        res = measure(which, (0.0, 0.75), max(1, args.warmup), args.base_reps if which == "base" else args.reps, device)
        full, masked = res["by_ratio"][0.0], res["by_ratio"][0.75]
        t_ratio = masked["step_s"] / full["step_s"]
        f_ratio = masked["gflops"] / full["gflops"]
        print(f"\n[{which}] {res['params_m']:.1f}M trainable params, batch {res['batch']}, full step")
        print(f"  loss terms: {res['terms']}")
        print(f"  {'':8}  {'step time (measured, ' + str(device) + ')':>28}  {'fwd+bwd GFLOP (counted on meta)':>32}")
        for label, r in (("r_v=0.00", full), ("r_v=0.75", masked)):
            print(f"  {label}  {r['step_s'] * 1e3:25.1f} ms  {r['gflops']:32.1f}")
        print(f"  ratio masked/unmasked: time {t_ratio:.3f}x (measured)  FLOPs {f_ratio:.3f}x (counted)")
        print(
            f"  'r_v=0.75 step time <= 0.45x unmasked': {'holds' if t_ratio <= 0.45 else 'does NOT hold'}"
            f"  ({time.perf_counter() - start:.0f} s)"
        )


if __name__ == "__main__":
    main()
