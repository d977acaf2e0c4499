"""Table 8's speed column (rap/speed.py): the mask ratios of the ablation grid, timed
interleaved in one process on the real embedded model, rendered as medians with their spread."""

from __future__ import annotations

from rap.config import load_params
from rap.speed import mask_ratios, measure_mask_speed, render_speed_table

from helpers.config import PARAMS_YAML, torch_threads


def test_mask_ratios_are_the_main_run_and_the_mask_ablations() -> None:
    params = load_params(PARAMS_YAML)
    assert mask_ratios(params) == [0.0, 0.5, 0.75]  # main run, mask-0.5, mask-0.75 (Table 8's rows)
    assert mask_ratios(load_params(PARAMS_YAML, {"ablations": ["racl-none", "frames-2"]})) == [0.0]


def test_measured_steps_and_their_table() -> None:
    params = load_params(PARAMS_YAML, {"pretrain.optim.batch_size": 4})
    with torch_threads(1):
        result = measure_mask_speed(params, [0.0, 0.75], warmup=1, reps=3)
    by_ratio = result["by_ratio"]
    assert list(by_ratio) == ["0.0", "0.75"] and all(len(t["times_s"]) == 3 for t in by_ratio.values())
    for t in by_ratio.values():
        assert t["q1_s"] <= t["median_s"] <= t["q3_s"] and min(t["times_s"]) > 0
    table = render_speed_table(result, "T8")
    row = next(ln for ln in table.splitlines() if ln.startswith("| 0.75"))
    speedup = by_ratio["0.0"]["median_s"] / by_ratio["0.75"]["median_s"]
    assert row.rstrip(" |").endswith(f"{speedup:.2f}x") and "| 0.0 " in table and "1.00x" in table
