"""Table 8's speed column: the MAC mask ratios timed against each other in one process.

The wall times of separate pipeline stages measure whatever else the machine did while each
ran (a fresh run once gave r_v = 0.75 a 16.7x "speed-up" where its FLOPs ratio is 0.42x). Here,
as in ``benchmarks/bench_mac.py``, the same model takes full pre-training steps (every loss term
of the main setting, forward + backward + AdamW) on the same batch, the ratios alternating step
by step so that load drift hits them alike, repeated; the table gives the median step time of
each ratio with its interquartile range, and the speed-up as the ratio of medians.

What is timed is the step's compute on one process (the embedded model at its training batch,
frames and resolution); data loading is not (the batch is built once; its pixel values do not
change the cost of a step). ``rap speed`` writes ``reports/timings/table8-speed.md`` (measured:
rewritten by every run, not reproduced byte for byte) and the figures to MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate
from tqdm import tqdm

from rap import tracking
from rap.atomic import write_json_atomic, write_text_atomic
from rap.config import Params, ablation_overrides
from rap.training.determinism import seed_everything

__all__ = ["mask_ratios", "measure_mask_speed", "render_speed_table", "run_speed", "synthetic_batch"]

CAPTION = "a small red circle moves from the left corner to the centre while a blue square spins"


def mask_ratios(params: Params) -> list[float]:
    """r_v of the main run, then of every ablation pre-training that changes r_v alone (Table 8's rows)."""
    main = dict(params.knobs)
    ratios = [main["mask_video"]]
    for name in params.ablations:
        knobs = ablation_overrides(name)
        if {k for k in main if knobs[k] != main[k]} == {"mask_video"} and knobs["mask_video"] not in ratios:
            ratios.append(knobs["mask_video"])
    return ratios


def synthetic_batch(model: torch.nn.Module, batch: int, frames: int, size: int) -> dict[str, torch.Tensor]:
    """A pre-training batch of the shapes and dtypes the loader delivers (uint8 frames, two
    views, tokenised captions) with random pixels: a step's cost does not depend on them."""
    tok = model.tokenizer(
        [CAPTION] * batch,
        padding="max_length",
        truncation=True,
        max_length=model.cfg.text.max_len_train,
        return_tensors="pt",
    )
    video = torch.randint(0, 256, (batch, frames, 3, size, size), dtype=torch.uint8)
    return {
        "video": video,
        "video_aug": video.flip(-1),
        "input_ids": tok["input_ids"],
        "attention_mask": tok["attention_mask"],
    }


def measure_mask_speed(params: Params, ratios: list[float], warmup: int = 2, reps: int = 10) -> dict[str, Any]:
    """Median, quartiles and all times (s) of one pre-training step per mask ratio, interleaved."""
    from rap.model.rap import RaPModel

    seed_everything(params.seed, params.cfg.deterministic)
    model = RaPModel(params.cfg.model, params.cfg.pretrain.loss).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    cfg = params.cfg
    batch = synthetic_batch(model, cfg.pretrain.optim.batch_size, params.knobs["frames"], cfg.model.vision.img_size)
    times: dict[float, list[float]] = {r: [] for r in ratios}
    for i in tqdm(range(warmup + reps), desc="speed: steps of each mask ratio"):
        for r in ratios:
            model.cfg = dataclasses.replace(model.cfg, mask_video=r)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            model(batch, phase="pretrain")["loss"].backward()
            opt.step()
            if i >= warmup:
                times[r].append(time.perf_counter() - t0)
    by_ratio = {}
    for r, ts in times.items():
        q1, med, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else (ts[0],) * 3
        by_ratio[str(r)] = {"median_s": statistics.median(ts), "q1_s": q1, "q3_s": q3, "times_s": ts}
    return {
        "measured_on": f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} torch threads)",
        "batch": params.cfg.pretrain.optim.batch_size,
        "frames": params.knobs["frames"],
        "image_size": params.cfg.model.vision.img_size,
        "warmup": warmup,
        "reps": reps,
        "by_ratio": by_ratio,
    }


def render_speed_table(result: dict[str, Any], title: str) -> str:
    """``reports/timings/table8-speed.md``: step time per ratio with its spread, speed-up."""
    by_ratio = result["by_ratio"]
    base = next(iter(by_ratio))
    body = []
    for r, t in by_ratio.items():
        body.append(
            [
                r,
                f"{t['median_s'] * 1e3:.0f} ({t['q1_s'] * 1e3:.0f}–{t['q3_s'] * 1e3:.0f})",
                f"{result['batch'] / t['median_s']:.1f}",
                f"{by_ratio[base]['median_s'] / t['median_s']:.2f}x",
            ]
        )
    return (
        "\n\n".join(
            [
                f"# Table 8, wall-clock columns: {title}",
                f"Measured by `rap speed` on {result['measured_on']}: one full pre-training step of the embedded "
                f"model (every loss term of the main setting; forward + backward + AdamW; batch {result['batch']} x "
                f"{result['frames']} frames at {result['image_size']} px), the mask ratios interleaved step by step in "
                f"one process, {result['reps']} timed steps each after {result['warmup']} untimed. Step time: median "
                "(interquartile range); speed-up = ratio of medians; data loading is not timed. Measured, so it "
                "varies from machine to machine: this file is rewritten by every run and is not part of what "
                "`make repro` reproduces.",
                tabulate(
                    body,
                    headers=["r_v", "Step (ms)", "Clips/s", f"Speed-up vs r_v={base}"],
                    tablefmt="github",
                    disable_numparse=True,
                    colalign=("left", "right", "right", "right"),
                ),
            ]
        )
        + "\n"
    )


def run_speed(params: Params, out_md: Path, out_json: Path, reps: int = 10) -> dict[str, Any]:
    """``rap speed``: measure, write the timing table and its JSON, log to MLflow."""
    from rap.reports.titles import TABLE8_TITLE

    ratios = mask_ratios(params)
    with tracking.stage_run("speed", params):
        result = measure_mask_speed(params, ratios, reps=reps)
        base = result["by_ratio"][str(ratios[0])]["median_s"]
        tracking.log_metrics(
            {f"speed/step_ms_rv_{r}": t["median_s"] * 1e3 for r, t in result["by_ratio"].items()}
            | {f"speed/speedup_rv_{r}": base / t["median_s"] for r, t in result["by_ratio"].items()}
        )
    write_json_atomic(result, out_json)
    write_text_atomic(out_md, render_speed_table(result, TABLE8_TITLE))
    print(json.dumps({r: round(base / t["median_s"], 2) for r, t in result["by_ratio"].items()}))
    return result
