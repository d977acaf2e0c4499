"""Reports: the paper's published rows, the run layout, the tables (1-9, and 5 and 9 over seeds)
and Figure 3."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rap.config import ConfigError, load_params
from rap.reports import layout
from rap.reports.paper_results import PAPER_ROWS, paper_blocks, paper_rap_row, paper_rows
from rap.reports.seed_tables import mean_interval, t_interval, write_seed_tables
from rap.reports.tables import BadMetricsError, MissingMetricsError, write_tables

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "test-run"


def _params(**overrides):
    return load_params(REPO / "params.yaml", overrides)


def _metrics(r1: float, r5: float = 50.0, r10: float = 60.0, mdr: float = 5.0) -> dict:
    block = {"R@1": r1, "R@5": r5, "R@10": r10, "MdR": mdr, "MnR": 20.0}
    return {"t2v": block, "v2t": dict(block), "dataset": "msrvtt", "split": "test"}


def _cells(line: str) -> list[str]:
    """Cells of one markdown table line."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _fabricate(params, root: Path, seed: int = 0) -> None:
    """Write every file the tables read, with seeded values (input data of the test)."""
    rnd = random.Random(seed)
    for path in layout.report_inputs(params, root):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "train_metrics.json":
            data = {"final_loss": {"loss": 1.0}, "flops_per_step": 2.5e12 * (1 - 0.5 * ("mask" in path.parent.name))}
        else:
            data = _metrics(round(rnd.uniform(1, 40), 3))
        path.write_text(json.dumps(data), encoding="utf-8")


# --------------------------------------------------------------------------------------
# Paper results
# --------------------------------------------------------------------------------------


def test_paper_rows_spot_checks():
    def row(table, block, method):
        (r,) = [r for r in paper_rows(table, block) if r.method == method]
        return r

    assert row(1, "Zero-shot", "RaP (ours)").values == (28.9, 47.5, 56.8, 7.0)
    assert row(1, "Zero-shot", "HD-VILA").values == (14.4, 31.6, 41.6, 17.5)
    assert row(1, "Zero-shot", "VIOLET").values == (25.9, 49.5, 59.7, None)
    assert row(1, "Fine-tuning on 7k training videos", "RaP (ours)").values == (38.5, 64.0, 74.4, 3.0)
    cots = row(1, "Fine-tuning on 9k training videos", "COTS")
    assert (cots.values, cots.data, cots.cite) == ((36.8, 63.8, 73.2, 2.0), "△", "Lu et al., 2022")
    assert row(2, "Fine-tuning", "ATP").values == (26.1, 50.5, None, None)
    assert row(2, "Zero-shot", "RaP (ours)").values == (29.5, 55.7, 65.6, 4.0)
    assert row(3, "Fine-tuning", "VSE++").values == (15.4, 39.6, 53.0, 9.0)
    assert row(4, "Fine-tuning", "CE").values == (11.2, 26.9, 34.8, 25.3)
    assert row(4, "Zero-shot", "RaP (ours)").values == (12.8, 26.6, 33.4, 37.0)
    assert paper_rap_row(5, "Zero-shot", "v2t").values == (26.6, 46.0, 55.3, 7.5)
    assert paper_rap_row(6, "Zero-shot", 1).values == (21.3, 40.2, 49.3, 11.0)
    assert paper_rap_row(7, "Zero-shot", 2.0).values == (26.7, 48.7, 57.5, 6.0)
    # row counts per block as printed, and the RaP row (28.9 zero-shot MSRVTT) shared by Tables 1, 5, 6, 7
    counts = {(t, b): len(paper_rows(t, b)) for t in range(1, 8) for b in paper_blocks(t)}
    assert counts == {
        (1, "Zero-shot"): 10,
        (1, "Fine-tuning on 7k training videos"): 11,
        (1, "Fine-tuning on 9k training videos"): 7,
        (2, "Zero-shot"): 6,
        (2, "Fine-tuning"): 9,
        (3, "Zero-shot"): 2,
        (3, "Fine-tuning"): 8,
        (4, "Zero-shot"): 1,
        (4, "Fine-tuning"): 13,
        (5, "Zero-shot"): 4,
        (6, "Zero-shot"): 4,
        (7, "Zero-shot"): 4,
    }
    ours = [r for r in PAPER_ROWS if r.ours and r.table in (5, 6, 7)]
    assert {r.values for r in ours} == {paper_rap_row(1, "Zero-shot").values}


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------


def test_layout_paths_and_ablation_rows(tmp_path):
    params = _params()
    assert layout.ablation_run_names(params) == list(params.ablations)
    rows = layout.table_rows(params, tmp_path)
    assert [r.key for r in rows[1]] == ["msrvtt", "msrvtt-7k", "msrvtt-9k"]
    assert rows[1][1].metrics == tmp_path / "eval/finetuned/msrvtt-7k.json"
    # the reference value of each ablated knob is the main run
    for table, ref in ((5, "both"), (6, 4), (7, 1.0), (8, 0.0)):
        main = [r for r in rows[table] if r.setting.is_main]
        assert [r.setting.value for r in main] == [ref]
        assert main[0].metrics == tmp_path / "eval/zeroshot/msrvtt.json"
    assert [r.setting.value for r in rows[5]] == ["none", "v2t", "t2v", "both"]
    assert [r.setting.value for r in rows[6]] == [1, 2, 4, 8]
    assert layout.table_metrics_path(params, 5, "racl-none", tmp_path) == tmp_path / "eval/ablation/racl-none.json"
    assert rows[8][1].train_metrics == tmp_path / "ablation/mask-0.5/train_metrics.json"
    inputs = layout.report_inputs(params, tmp_path)
    assert len(inputs) == len(set(inputs)) and tmp_path / "pretrain/main/train_metrics.json" in inputs
    assert not any(p.name == "train_timings.json" for p in inputs)  # measured: never a dependency
    with pytest.raises(ConfigError, match="lambda-x"):
        layout.run_dir("ablation", "lambda-x", tmp_path)
    with pytest.raises(ConfigError, match="msrvtt-5k"):
        layout.metrics_path("finetuned", "msrvtt-5k", tmp_path)
    assert layout.task_dataset("msrvtt-9k") == "msrvtt"


def test_layout_main_off_reference_has_no_reference_rows(tmp_path):
    params = _params(**{"lambda": 2.0})
    rows = layout.table_rows(params, tmp_path)
    refs = [r for t in (5, 6, 7, 8) for r in rows[t] if r.setting.is_main]
    assert len(refs) == 4 and all(r.metrics is None for r in refs)
    # the main run's own zero-shot MSRVTT still feeds Table 1
    assert rows[1][0].metrics == tmp_path / "eval/zeroshot/msrvtt.json"


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


def test_write_tables_paper_scale(tmp_path):
    params = _params(scale="paper")
    root = tmp_path / "runs"
    _fabricate(params, root)
    # a known value: zero-shot MSRVTT R@1 30.0 against the paper's 28.9
    (root / "eval/zeroshot/msrvtt.json").write_text(json.dumps(_metrics(30.0, 47.0, 60.04, 7.0)))
    paths = write_tables(params, root, tmp_path / "reports", run_id=RUN_ID)
    assert [p.name for p in paths] == [f"table{i}.md" for i in range(1, 10)] + ["README.md"]
    label = f"RaP (this run, paper, {RUN_ID})"
    for i in range(1, 8):
        text = (tmp_path / "reports" / f"table{i}.md").read_text(encoding="utf-8")
        sections = {s.split("\n", 1)[0]: s for s in text.split("\n## ")[1:]}
        assert list(sections) == paper_blocks(i)
        for block, section in sections.items():
            assert label in section
            for r in paper_rows(i, block):  # every published row, in order, as printed
                name = r.label if i <= 4 else f"paper: {r.method}"
                line = next(ln for ln in section.splitlines() if name in ln)
                assert _cells(line)[-4:] == ["-" if v is None else f"{v:.1f}" for v in r.values]
    t1 = (tmp_path / "reports/table1.md").read_text(encoding="utf-8").splitlines()
    i = next(k for k, ln in enumerate(t1) if label in ln)
    assert _cells(t1[i])[-4:] == ["30.0", "47.0", "60.0", "7.0"]  # no interval in that file
    assert "Δ" in t1[i + 1]
    assert _cells(t1[i + 1])[-4:] == ["+1.1", "-0.5", "+3.2", "0.0"]
    # the main run's row reappears as the reference row of the ablation tables, with the same Δ
    t5 = (tmp_path / "reports/table5.md").read_text(encoding="utf-8")
    main = next(ln for ln in t5.splitlines() if f"**{label}** [main run]" in ln)
    assert _cells(main) == ["both", f"**{label}** [main run]", "30.0", "47.0", "60.0", "7.0"]
    assert f"**{label}** [racl-none]" in t5
    t8 = (tmp_path / "reports/table8.md").read_text(encoding="utf-8")
    assert "mask-0.75" in t8 and "2500.0" in t8 and "0.50x" in t8  # GFLOPs/step, FLOPs vs r_v = 0
    assert "Clips/s" not in t8 and "timings/table8-speed.md" in t8  # wall-clock figures live apart (rap speed)
    assert not (tmp_path / "reports/timings").exists()  # measured by `rap speed`, not by the tables
    readme = (tmp_path / "reports/README.md").read_text(encoding="utf-8")
    assert all(f"(table{i}.md)" in readme for i in range(1, 10))
    t9 = (tmp_path / "reports/table9.md").read_text(encoding="utf-8")
    assert t9.count("no ground truth") == 9 * 6  # paper scale: no localisation block, 6 runs x 9 columns
    # `rap evaluate` writes 95 % bootstrap intervals (ci95): this run's R@K show them, the Δ row not
    (root / "eval/zeroshot/msrvtt.json").write_text(
        json.dumps(
            {
                **_metrics(30.0, 47.0, 60.04, 7.0),
                "ci95": {
                    "t2v": {
                        "R@1_lo": 21.25,
                        "R@1_hi": 38.0,
                        "R@5_lo": 40.0,
                        "R@5_hi": 55.0,
                        "R@10_lo": 50.0,
                        "R@10_hi": 70.0,
                    }
                },
            }
        )
    )
    write_tables(params, root, tmp_path / "reports", run_id=RUN_ID)
    t1 = (tmp_path / "reports/table1.md").read_text(encoding="utf-8").splitlines()
    assert _cells(t1[i])[-4:] == ["30.0 (21.2–38.0)", "47.0 (40.0–55.0)", "60.0 (50.0–70.0)", "7.0"]
    assert _cells(t1[i + 1])[-4:] == ["+1.1", "-0.5", "+3.2", "0.0"]


def test_write_tables_deterministic_and_embedded_has_no_differences(tmp_path):
    params = _params()  # embedded scale
    texts = []
    for sub in ("a", "b"):  # different roots, same metrics -> same bytes
        _fabricate(params, tmp_path / sub / "runs", seed=3)
        write_tables(params, tmp_path / sub / "runs", tmp_path / sub / "reports", run_id=RUN_ID)
        texts.append(
            [
                (tmp_path / sub / "reports" / f).read_bytes()
                for f in sorted(p.name for p in (tmp_path / sub / "reports").iterdir() if p.is_file())
            ]
        )
    assert texts[0] == texts[1]
    t1 = (tmp_path / "a/reports/table1.md").read_text(encoding="utf-8")
    assert f"RaP (this run, embedded, {RUN_ID})" in t1 and "Δ" not in t1.split("## Zero-shot")[1]


def test_missing_metrics_file_is_named(tmp_path):
    params = _params(scale="paper")
    root = tmp_path / "runs"
    _fabricate(params, root)
    gone = root / "eval/ablation/frames-2.json"
    gone.unlink()
    with pytest.raises(MissingMetricsError, match="frames-2.json"):
        write_tables(params, root, tmp_path / "reports", run_id=RUN_ID)
    assert not (tmp_path / "reports").exists()  # nothing written on error
    write_tables(params, root, tmp_path / "reports", run_id=RUN_ID, allow_missing=True)
    t6 = (tmp_path / "reports/table6.md").read_text(encoding="utf-8")
    assert _cells(next(ln for ln in t6.splitlines() if "[frames-2]" in ln))[-4:] == ["missing"] * 4


def test_bad_metrics_file_is_named(tmp_path):
    params = _params()
    root = tmp_path / "runs"
    _fabricate(params, root)
    bad = root / "eval/finetuned/lsmdc.json"
    bad.write_text(json.dumps({"t2v": {"R@1": 1.0, "R@5": 2.0, "R@10": "x", "MdR": 4.0}}))
    with pytest.raises(BadMetricsError, match=r"lsmdc\.json: t2v\.R@10"):
        write_tables(params, root, tmp_path / "reports", run_id=RUN_ID)


def test_reference_rows_na_when_main_run_is_off_reference(tmp_path):
    params = _params(scale="paper", **{"lambda": 2.0})
    root = tmp_path / "runs"
    _fabricate(params, root)
    write_tables(params, root, tmp_path / "reports", run_id=RUN_ID)
    t7 = (tmp_path / "reports/table7.md").read_text(encoding="utf-8")
    assert _cells(next(ln for ln in t7.splitlines() if "[main run]" in ln))[-4:] == ["n/a"] * 4
    assert "not at the paper's main setting" in t7


# --------------------------------------------------------------------------------------
# Figure 3
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny generated MSRVTT test split and two tiny RaP checkpoints (random weights)."""
    import torch

    from rap.checkpoint_io import atomic_save
    from rap.data import synthetic
    from rap.model.rap import RaPModel

    root = tmp_path_factory.mktemp("fig")
    synthetic.generate("msrvtt", root / "data/raw/msrvtt", seed=0, scale=0.01)
    params = _params(
        **{"data.root": str(root / "data"), "data.frames_eval": 2, "model.vision.depth": 1, "model.text.num_layers": 1}
    )
    ckpts = []
    for seed, name in enumerate(("racl", "baseline")):
        torch.manual_seed(seed)
        model = RaPModel(params.cfg.model, params.cfg.pretrain.loss)
        ckpts.append(atomic_save({"model": model.state_dict()}, root / name / "checkpoint.pt"))
    return params, root, ckpts


def test_redundancy_weights_are_eqs_4_to_8(tiny_setup):
    import torch

    from rap.reports.figure import load_model, redundancy_weights

    params, _, (ckpt, _) = tiny_setup
    model = load_model(params, ckpt)
    torch.manual_seed(0)
    video = torch.randn(2, 2, 3, params.cfg.data.image_size, params.cfg.data.image_size)
    tok = model.tokenizer(["a red circle moves left", "a cube"], padding="longest", return_tensors="pt")
    ws = redundancy_weights(model, video, tok["input_ids"], tok["attention_mask"])
    with torch.no_grad():
        v = model.encode_video(video)
        t = model.encode_text(tok["input_ids"], tok["attention_mask"])
    for b, w in enumerate(ws):
        n_tok = int(tok["attention_mask"][b].sum()) - 1  # tokens after [CLS], [SEP] included
        assert len(w.tokens) == n_tok == len(w.token) and w.tokens[-1] == "[SEP]"
        sim = v.patches[b] @ t.tokens[b, :n_tok].T  # s(P_n, T_l), eq. (1)
        # 1 - vr_n = 1 - min_l (1 - s) = max_l s (eqs. 4-5); 1 - tr_l = max_n s (eq. 6)
        assert torch.allclose(torch.from_numpy(w.patch.reshape(-1)), sim.max(dim=1).values, atol=1e-5)
        assert torch.allclose(torch.from_numpy(w.token), sim.max(dim=0).values, atol=1e-5)
        # the paper's Figure 3: s(T_cls, P_n) over patches, s(P_cls, T_l) over tokens
        assert torch.allclose(torch.from_numpy(w.cls_patch.reshape(-1)), v.patches[b] @ t.emb[b], atol=1e-5)
        assert torch.allclose(torch.from_numpy(w.cls_token), t.tokens[b, :n_tok] @ v.emb[b], atol=1e-5)


def test_draw_figure_writes_png(tiny_setup):
    from rap.reports.figure import draw_figure

    params, root, (racl, baseline) = tiny_setup
    out = draw_figure(params, racl, baseline, root / "reports/figure3.png", track=False)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    again = draw_figure(params, racl, baseline, root / "reports/again.png", track=False)
    assert again.read_bytes() == data  # deterministic


def test_load_model_rejects_partial_checkpoint(tiny_setup):
    import torch

    from rap.checkpoint_io import atomic_save
    from rap.reports.figure import load_model

    params, root, (ckpt, _) = tiny_setup
    state = torch.load(ckpt, weights_only=False)["model"]
    partial = {k: v for k, v in state.items() if not k.startswith("text_proj")}
    bad = atomic_save({"model": partial}, root / "partial.pt")
    with pytest.raises(RuntimeError, match="partial.pt.*text_proj"):
        load_model(params, bad)


def _localisation(patch_auc: float, token_auc: float) -> dict:
    def part(auc: float) -> dict:
        scores = {
            "auc": auc,
            "ap": auc / 2,
            "positives": 10,
            "negatives": 30,
            "auc_lo": auc - 0.05,
            "auc_hi": auc + 0.05,
        }
        cls = {**scores, "auc": auc + 0.05}
        return {"paper": scores, "official": {**scores, "auc": 1 - auc}, "cls_query": cls, "pair_auc": auc, "pairs": 4}

    return {"patch": part(patch_auc), "token": part(token_auc), "object_min": 0.5, "skipped_videos": 0}


def test_table9_localisation_rows(tmp_path):
    params = _params()
    root = tmp_path / "runs"
    _fabricate(params, root)
    rows = layout.table_rows(params, root)[layout.LOCALISATION_TABLE]
    # Table 5's four RaCL directions, then the release's variant and detached weights
    assert [r.key for r in rows] == [
        "racl-none",
        "racl-v2t",
        "racl-t2v",
        "racl-both (main)",
        "variant-official",
        "weightgrad-false",
    ]
    for i, r in enumerate(rows):
        data = json.loads(r.metrics.read_text())
        r.metrics.write_text(json.dumps({**data, "localisation": _localisation(0.1 * (i + 1), 0.9)}))
    write_tables(params, root, tmp_path / "reports", run_id=RUN_ID)
    t9 = (tmp_path / "reports/table9.md").read_text(encoding="utf-8")
    line = next(ln for ln in t9.splitlines() if "[weightgrad-false]" in ln or "| weightgrad-false" in ln)
    cells = _cells(line)
    assert cells[0] == "RaCL both, paper w, w grad off"
    # patch AUC (paper w), release w, per pair, AP; token AUC, release w, AP
    assert cells[2:9] == ["0.60", "0.40", "0.60", "0.30", "0.90", "0.10", "0.45"]
    assert cells[9:11] == ["0.65", "0.95"]  # the paper's Figure 3 maps: [CLS] query over patches, tokens
    main = next(ln for ln in t9.splitlines() if "main run" in ln)
    assert _cells(main)[0] == "RaCL both, paper w, w grad on" and _cells(main)[2] == "0.40"
    assert "AP at chance = the share of positives (patch 0.25, token 0.25)" in t9
    # the features behind it: written by rap evaluate beside the scores; absent: "-"
    diag = next(ln for ln in t9.splitlines() if ln.startswith("| RaCL both, paper w, w grad off") and "0.60" not in ln)
    assert set(_cells(diag)[1:]) == {"-"}


def test_seed_tables_mean_and_sd(tmp_path):
    params = _params()
    root = tmp_path / "runs"
    _fabricate(params, root)
    groups = layout.seed_groups(params, root)
    none = next(g for g in groups if g.row.key == "racl-none")
    assert none.seeds == (0, 1, 2, 3, 4) and none.metrics[1] == root / "eval/seeds/racl-none+seed-1.json"
    assert next(g for g in groups if g.row.key == "racl-v2t").seeds == (0, 1, 2)
    main = next(g for g in groups if g.row.setting.is_main)
    assert main.metrics[2] == root / "eval/seeds/seed-2.json"  # the main setting with seed 2
    with pytest.raises(MissingMetricsError, match="racl-none\\+seed-1"):
        write_seed_tables(params, root, tmp_path / "seeds")
    for g in groups:
        for k, path in enumerate(g.metrics):
            path.parent.mkdir(parents=True, exist_ok=True)
            r1 = {"racl-none": 10.0, "weightgrad-false": 20.0}.get(g.row.key, 15.0) + 2.0 * k  # seeds 0, 1, ...
            ci = {"t2v": {"R@1_lo": r1 - 4, "R@1_hi": r1 + 4, "R@5_lo": 45, "R@5_hi": 55, "R@10_lo": 55, "R@10_hi": 65}}
            diag = {"token_collapse": 0.9 - 0.1 * k, "videos": 20, "pairs": 20}
            loc = _localisation(0.2 + 0.1 * k, 0.5)
            path.write_text(json.dumps({**_metrics(r1), "ci95": ci, "localisation": loc, "diagnostics": diag}))
    paths = write_seed_tables(params, root, tmp_path / "seeds")
    assert [p.name for p in paths] == ["table5.md", "table9.md"]
    t5 = paths[0].read_text(encoding="utf-8")
    row = next(ln for ln in t5.splitlines() if ln.startswith("| RaCL none"))
    # 10, 12, 14, 16, 18: mean 14, sd sqrt(10), t(0.975, 4) = 2.776 -> half-width 3.93
    assert _cells(row)[1:3] == ["0, 1, 2, 3, 4", "14.00 [10.07, 17.93] q ±4.00"]
    assert "variant" not in t5.split("|---")[1]  # Table 9's own rows are not in Table 5
    t9 = paths[1].read_text(encoding="utf-8")
    row = next(ln for ln in t9.splitlines() if ln.startswith("| RaCL both, paper w, w grad off"))
    # patch AUC 0.2, 0.3, ..., 0.6 over five seeds: mean 0.4, sd 0.158, half-width 0.196
    assert _cells(row)[2] == "0.40 [0.20, 0.60] q ±0.05" and _cells(row)[-1] == "24.00 [20.07, 27.93] q ±4.00"
    heads = _cells(next(ln for ln in t9.splitlines() if ln.startswith("| Pre-training")))
    assert _cells(row)[heads.index("token collapse")] == "0.70 [0.50, 0.90]"  # no bootstrap for a diagnostic
    v2t = next(ln for ln in t9.splitlines() if ln.startswith("| RaCL v2t"))
    assert _cells(v2t)[1] == "0, 1, 2"
    assert mean_interval([]) == "-" and mean_interval([3.0]) == "3.00 (n=1)"
    mean, lo, hi = t_interval([1.0, 3.0])  # t(0.975, 1) = 12.706, sd sqrt(2), n 2: half-width 12.706
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - 12.706, 2.0 + 12.706), abs=1e-3)


def test_controlled_experiment_table(tmp_path):
    """controlled/params.yaml is read and checked; the table pools each look and setting over
    its seeds (mean with the t interval) from the metrics controlled/dvc.yaml writes."""
    from rap.data.synthetic import DEFAULT_LOOK
    from rap.reports.controlled import eval_path, read_spec, write_controlled_table

    spec = read_spec(REPO / "controlled/params.yaml")
    assert spec.looks["reference"] == DEFAULT_LOOK and spec.looks["large-object"].object_scale == 2.0
    assert "seed-0" in spec.runs and "racl-none+seed-2" in spec.runs
    with pytest.raises(MissingMetricsError, match="reference/seed-0.json"):
        write_controlled_table(REPO / "controlled/params.yaml", tmp_path / "runs", tmp_path / "out")
    for look in spec.looks:
        for run in spec.runs:
            seed = int(run.rsplit("-", 1)[1])
            auc = (0.3 if run.startswith("racl-none") else 0.2) + 0.1 * seed + (0.3 if look == "large-object" else 0)
            path = eval_path(tmp_path / "runs", look, run)
            path.parent.mkdir(parents=True, exist_ok=True)
            diag = {"token_collapse": 0.9, "background_token_alignment": 0.8, "object_token_alignment": 0.4}
            path.write_text(
                json.dumps({**_metrics(20.0), "localisation": _localisation(auc, 0.5), "diagnostics": diag})
            )
    (out,) = write_controlled_table(REPO / "controlled/params.yaml", tmp_path / "runs", tmp_path / "out")
    text = out.read_text(encoding="utf-8")
    row = next(ln for ln in text.splitlines() if ln.startswith("| large-object") and "RaCL both" in ln)
    # patch AUC 0.5, 0.6, 0.7 over seeds 0-2: sd 0.1, t(0.975, 2) = 4.303 -> half-width 0.248
    assert _cells(row)[3:6] == ["0, 1, 2", "0.60 [0.35, 0.85] q ±0.05", "0.65 [0.40, 0.90] q ±0.05"]
    assert "object x2, texture x1" in row and "0.90 [0.90, 0.90]" in row
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "controlled/params.yaml").read_text().replace("texture: 3.0", "texture: -1"))
    with pytest.raises(ConfigError, match="looks.textured: texture"):
        read_spec(bad)
