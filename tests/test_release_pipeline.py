"""The authors' released checkpoints in the pipeline (issue 18, part 4): release/dvc.yaml's own
commands import a release-format file placed at its documented path and evaluate it with both
recipes, and Tables 1-4 show the numbers beside the paper's; without the files the rows say so
and nothing fails.

The release file is the fixture of tests/test_release.py (the release's own model classes at a
small configuration, tests/fixtures/release/); params.yaml's embedded scale is set to its size.
The commands are read from release/dvc.yaml as DVC resolves them and run in-process through
``rap.cli.main`` in a directory laid out as the repository (``dvc repro release/dvc.yaml`` itself
would download and extract four datasets first: minutes, not seconds).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path
from typing import get_args

import pytest
import yaml

from rap.cli import main
from rap.config import EvalRecipe, load_params
from rap.registry import DOWNSTREAM_DATASETS, FINETUNE
from rap.release import PRETRAINED, RECIPES, RELEASED_FILES, RELEASED_TASKS
from rap.reports import layout
from rap.reports.tables import write_tables

from helpers.config import REPO, shrunk_overrides
from helpers.release import CONFIG, FIXTURE, fixture_overrides
from helpers.snakemake import write_params

PIPELINE = "release/dvc.yaml"


def _release_stages() -> dict[str, str]:
    """release/dvc.yaml's stages (foreach and matrix expanded) -> their commands, as DVC runs them."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {s.name: s.cmd for s in repo.stage.collect(str(REPO / PIPELINE))}


def test_release_pipeline_repeats_the_release_list():
    """release/dvc.yaml (which cannot import Python) names the files rap.release lists, at the
    paths rap.reports.layout gives, and evaluates each with every recipe; the default pipeline's
    tables stage depends on none of it (DVC stops on a missing dependency)."""
    assert set(RECIPES) == set(get_args(EvalRecipe))
    stages = yaml.safe_load((REPO / PIPELINE).read_text())["stages"]
    assert stages["import"]["foreach"] == dict(RELEASED_FILES)
    assert stages["zeroshot"]["matrix"] == {"recipe": list(RECIPES), "dataset": list(DOWNSTREAM_DATASETS)}
    assert stages["finetuned"]["foreach"] == {
        f"{r}-{t}": {"recipe": r, "task": t, "dataset": FINETUNE[t].dataset} for r in RECIPES for t in RELEASED_TASKS
    }
    cmds = _release_stages()
    for name, file in RELEASED_FILES.items():
        placed = layout.release_file(name, "data").as_posix()
        assert placed == f"data/release/{file}"
        out = layout.release_checkpoint_path(name).parent.as_posix()
        assert cmds[f"import@{name}"].startswith(f"rap import-release {placed} --out {out} "), name
    for recipe, kind, name in layout.release_evaluations():
        key = f"{recipe}-{name}"
        assert f"--out {layout.release_metrics_path(recipe, kind, name).as_posix()} " in cmds[f"{kind}@{key}"]
        assert cmds[f"{kind}@{key}"].endswith(f"--set evaluate.recipe={recipe}")
    assert len(cmds) == len(RELEASED_FILES) + len(layout.release_evaluations())
    tables = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["tables"]
    assert not [d for d in tables["deps"] if d.startswith(("runs/eval/release", "runs/release", "data/release"))]


@pytest.fixture
def release_repo(tmp_path: Path, corpus_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory laid out as the repository: data/ holding the test corpus (linked) and a
    params file at the release fixture's size; the working directory."""
    data = tmp_path / "data"
    data.mkdir()
    for entry in corpus_root.iterdir():
        (data / entry.name).symlink_to(entry)
    overrides = {**shrunk_overrides(Path("data")), **fixture_overrides()}
    del overrides["evaluate.recipe"]  # each stage sets its own
    overrides["data.image_size"] = CONFIG["small"]["image_size"]
    write_params(tmp_path / "params.yaml", overrides)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _tables(root: Path) -> dict[int, str]:
    params = load_params(root / "params.yaml")
    # the default pipeline's own runs are not there: their cells read "missing"
    write_tables(params, Path("runs"), Path("reports"), allow_missing=True)
    return {t: (root / "reports" / f"table{t}.md").read_text() for t in (1, 2, 3, 4)}


def _block(text: str, block: str) -> str:
    return text.split(f"## {block}\n")[1].split("\n## ")[0]


def _release_row(block_text: str, file: str, recipe: str) -> str:
    (row,) = [r for r in block_text.splitlines() if f"`{file}`, evaluated by rap ({recipe} recipe)" in r]
    return row


def test_rows_say_not_placed_without_the_files(release_repo: Path):
    tables = _tables(release_repo)
    for table, text in tables.items():
        for block, task in layout.RESULT_TABLES[table][1]:
            name = PRETRAINED if task is None else task
            if name not in RELEASED_FILES:
                assert "authors' checkpoint: none released for this task" in _block(text, block)
                continue
            for recipe in RECIPES:
                row = _release_row(_block(text, block), RELEASED_FILES[name], recipe)
                assert f": not placed (`data/release/{RELEASED_FILES[name]}`)" in row, row
    assert "`dvc repro release/dvc.yaml`, then `dvc repro -f -s tables`" in tables[1]


def test_placed_files_are_imported_evaluated_with_both_recipes_and_tabled(release_repo: Path, single_thread):
    """The pre-trained file and the MSRVTT-7k fine-tuned one placed (both release-format files
    of the fixture): release/dvc.yaml's import, zero-shot and fine-tuned MSRVTT commands run, the
    metrics land where the tables read them and become rows with numbers; the other files' rows
    still say not placed, a placed file not yet evaluated says so; `rap finetune` starts from the
    imported pre-trained file."""
    placed = {PRETRAINED: "release_pretrain.pth", "msrvtt-7k": "release_retrieval.pth"}
    for name, fixture in placed.items():
        target = layout.release_file(name, "data")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIXTURE / fixture, target)
    cmds = _release_stages()
    params = ["--params", str(release_repo / "params.yaml")]
    for stage in (
        "import@pretrain",
        "import@msrvtt-7k",
        *(f"{k}@{r}-{n}" for k, n in (("zeroshot", "msrvtt"), ("finetuned", "msrvtt-7k")) for r in RECIPES),
    ):
        argv = shlex.split(cmds[stage])
        assert argv[0] == "rap"
        assert main(argv[1:] + params) == 0, stage

    for recipe, kind, name in (("release", "zeroshot", "msrvtt"), ("rap", "finetuned", "msrvtt-7k")):
        metrics = layout.release_metrics_path(recipe, kind, name)
        info = json.loads(metrics.with_name(f"{name}.run.json").read_text())
        assert info["recipe"] == recipe and info["checkpoint"] == str(
            layout.release_checkpoint_path(PRETRAINED if kind == "zeroshot" else name)
        )
    assert "v2t" not in json.loads(layout.release_metrics_path("release", "zeroshot", "msrvtt").read_text())

    tables = _tables(release_repo)
    for block, name in (("Zero-shot", PRETRAINED), ("Fine-tuning on 7k training videos", "msrvtt-7k")):
        kind, key = ("zeroshot", "msrvtt") if name == PRETRAINED else ("finetuned", name)
        for recipe in RECIPES:
            row = _release_row(_block(tables[1], block), RELEASED_FILES[name], recipe)
            t2v = json.loads(layout.release_metrics_path(recipe, kind, key).read_text())["t2v"]
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert cells[0].startswith("**authors' checkpoint") and cells[1] == "♣"
            assert [re.sub(r" \(.*\)$", "", c) for c in cells[2:]] == [
                f"{t2v[k]:.1f}" for k in ("R@1", "R@5", "R@10", "MdR")
            ], row
            assert re.fullmatch(r"\d+\.\d \(\d+\.\d–\d+\.\d\)", cells[2]), cells[2]  # R@1 with its interval
    assert "release-recipe/zeroshot/msrvtt.json" in tables[1]
    # placed, not evaluated: DiDeMo zero-shot; not placed: DiDeMo's fine-tuned file
    didemo = tables[2]
    assert "not evaluated: `dvc repro release/dvc.yaml`" in _release_row(
        _block(didemo, "Zero-shot"), RELEASED_FILES[PRETRAINED], "rap"
    )
    assert ": not placed" in _release_row(_block(didemo, "Fine-tuning"), RELEASED_FILES["didemo"], "release")

    out = release_repo / "runs" / "finetune-from-release"
    argv = ["finetune", "msrvtt-7k", "--checkpoint", str(layout.release_checkpoint_path(PRETRAINED))]
    assert main([*argv, "--out", str(out), "--max-steps", "1", *params]) == 0
    assert (out / "checkpoint.pt").is_file()


def test_paper_scale_rows_give_the_difference_to_the_paper(tmp_path: Path):
    """At the paper scale an evaluated released file's row is followed by its difference to the
    paper's RaP row (the release's README reports the paper's numbers for its files)."""
    from rap.reports.paper_results import paper_rap_row

    from helpers.config import PARAMS_YAML

    params = load_params(PARAMS_YAML, {"scale": "paper", "data.root": str(tmp_path / "data")})
    metrics = layout.release_metrics_path("release", "zeroshot", "lsmdc", tmp_path / "runs")
    metrics.parent.mkdir(parents=True)
    t2v = {"R@1": 11.04, "R@5": 27.0, "R@10": 35.54, "MdR": 40.0}
    metrics.write_text(json.dumps({"t2v": t2v}))
    write_tables(params, tmp_path / "runs", tmp_path / "reports", allow_missing=True)
    block = _block((tmp_path / "reports" / "table4.md").read_text(), "Zero-shot")
    lines = block.splitlines()
    i = next(i for i, r in enumerate(lines) if "`rap_pretrain.pth`, evaluated by rap (release recipe)" in r)
    assert [c.strip() for c in lines[i].strip("|").split("|")][2:] == ["11.0", "27.0", "35.5", "40.0"]
    diff = [c.strip() for c in lines[i + 1].strip("|").split("|")]
    paper = paper_rap_row(4, "Zero-shot").values
    assert diff[0] == "Δ (authors' checkpoint, release recipe − paper RaP)"
    assert diff[2:] == [f"{round(float(f'{v:.1f}') - p, 1):+.1f}" for v, p in zip(t2v.values(), paper)]
    assert "not placed" in _release_row(block, "rap_pretrain.pth", "rap")  # no file, no metrics
