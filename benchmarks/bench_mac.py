"""MAC efficiency: training-step time and FLOPs at r_v = 0.75 vs r_v = 0 on the same model.

Two models, each built from the config (random init, no downloads):

* ``small``: the embedded model of params.yaml with every loss term on, batch 16 x 4 frames at
  64 px (the embedded training setting);
* ``base``: ViT-B/16 at 256 px + BERT-base (paper sizes, ``vision.timm_name``
  vit_base_patch16_224 with img_size 256, BERT 768/12/12/3072), batch 2 x 4 frames, with ITC
  and RaCL only (ITM/LM/intra-modal switched off to keep the CPU run short).

A step = forward + backward + AdamW step (median of ``--reps`` after ``--warmup``). FLOPs =
forward + backward, counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmul-type ops).

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

ROOT = Path(__file__).resolve().parents[1]
CAPTION = "a small red circle moves from the left corner to the centre while a blue square spins"


def configs(which: str) -> tuple[ModelConfig, LossConfig, int, int]:
    """(model cfg, loss cfg, batch, image size)."""
    params = load_params(ROOT / "params.yaml")
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
    loss = dataclasses.replace(
        params.cfg.pretrain.loss,
        itm_weight=0.0,
        lm_weight=0.0,
        intra_video_weight=0.0,
        intra_text_weight=0.0,
        momentum=False,
    )
    return model, loss, 2, 256


def make_batch(model: RaPModel, batch: int, frames: int, size: int, device: torch.device) -> dict:
    tok = model.tokenizer(
        [CAPTION] * batch,
        padding="max_length",
        truncation=True,
        max_length=model.cfg.text.max_len_train,
        return_tensors="pt",
    )
    video = torch.randn(batch, frames, 3, size, size)
    return {
        k: v.to(device)
        for k, v in {
            "video": video,
            "video_aug": torch.randn_like(video),
            "input_ids": tok["input_ids"],
            "attention_mask": tok["attention_mask"],
        }.items()
    }


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
    flops, times = {}, {r: [] for r in ratios}
    # Ratios alternate step by step so that load drift on a shared machine hits both alike.
    # The first (warm-up) step of each ratio runs under FlopCounterMode: it counts the matmul-type
    # ops of forward + backward (the optimiser's element-wise updates are not counted).
    for i in tqdm(range(warmup + reps), desc=f"{which}: steps (each ratio)"):
        for r in ratios:
            model.cfg = dataclasses.replace(model.cfg, mask_video=r)
            if i == 0:
                with FlopCounterMode(display=False) as counter:
                    terms = step(model, opt, batch)
                flops[r] = counter.get_total_flops() / 1e9
                continue
            sync(device)
            t0 = time.perf_counter()
            step(model, opt, batch)
            sync(device)
            if i >= warmup:
                times[r].append(time.perf_counter() - t0)
    results = {r: {"step_s": statistics.median(times[r]), "gflops": flops[r]} for r in ratios}
    return {"params_m": n_params / 1e6, "batch": f"{batch_size}x4x{size}px", "terms": terms, "by_ratio": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--which", nargs="+", default=["small", "base"], choices=["small", "base"])
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per ratio (>= 1; the first counts FLOPs)")
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
        print(f"\n[{which}] {res['params_m']:.1f}M trainable params, batch {res['batch']}, terms {res['terms']}")
        print(f"  r_v=0.00: step {full['step_s'] * 1e3:9.1f} ms   fwd+bwd {full['gflops']:9.1f} GFLOP")
        print(f"  r_v=0.75: step {masked['step_s'] * 1e3:9.1f} ms   fwd+bwd {masked['gflops']:9.1f} GFLOP")
        print(f"  ratio masked/unmasked: time {t_ratio:.3f}x  FLOPs {f_ratio:.3f}x")
        print(
            f"  'r_v=0.75 step time <= 0.45x unmasked': {'holds' if t_ratio <= 0.45 else 'does NOT hold'}"
            f"  ({time.perf_counter() - start:.0f} s)"
        )


if __name__ == "__main__":
    main()
