"""dvc.yaml lists, for every stage, exactly the rap/ files its command runs (no more: an edit
elsewhere must not rerun it; no less: an edit there must). The real engine's behaviour after
edits (`dvc status`, `dvc repro` keeping user files) is checked in tests/test_pipeline.py on a
real run of the pipeline."""

from __future__ import annotations

import re

import pytest
import yaml

from rap.registry import ALL_DATASETS

from helpers.code_deps import REPO, cli_closure

# the `rap` subcommand of each stage (rap/cli.py imports its modules inside the subcommand)
STAGE_COMMANDS = {
    "download": "download",
    "extract": "extract",
    "pretrain": "pretrain",
    "ablation": "pretrain",
    "finetune": "finetune",
    "zeroshot": "evaluate",
    "finetuned": "evaluate",
    "ablation-zeroshot": "evaluate",
    "tables": "tables",
    "figure": "figure",
    "speed": "speed",
}


def _stage_deps(stage: dict) -> list[str]:
    body = stage.get("do", stage)
    return [d for d in body.get("deps", []) if isinstance(d, str)]


# seeds/dvc.yaml: the seed repeats of Tables 5 and 9 (`dvc repro seeds/dvc.yaml`)
SEED_STAGE_COMMANDS = {"seed-pretrain": "pretrain", "seed-zeroshot": "evaluate", "seed-tables": "tables"}
# controlled/dvc.yaml: the controlled experiment of issue 20 (`dvc repro controlled/dvc.yaml`); its
# data stage runs both `rap download` and `rap extract`
CONTROLLED_STAGE_COMMANDS = {
    "data": ("download", "extract"),
    "pretrain": "pretrain",
    "zeroshot": "evaluate",
    "table": "tables",
}
# release/dvc.yaml: the authors' released checkpoints imported and evaluated (`dvc repro release/dvc.yaml`)
RELEASE_STAGE_COMMANDS = {"import": "import_release", "zeroshot": "evaluate", "finetuned": "evaluate"}
PIPELINES = {
    "dvc.yaml": STAGE_COMMANDS,
    "seeds/dvc.yaml": SEED_STAGE_COMMANDS,
    "controlled/dvc.yaml": CONTROLLED_STAGE_COMMANDS,
    "release/dvc.yaml": RELEASE_STAGE_COMMANDS,
}


@pytest.mark.parametrize("pipeline,name", [(p, n) for p, commands in PIPELINES.items() for n in sorted(commands)])
def test_stage_lists_exactly_the_code_it_runs(pipeline, name):
    stages = yaml.safe_load((REPO / pipeline).read_text())["stages"]
    listed = {d for d in _stage_deps(stages[name]) if d.startswith("rap/")}
    commands = PIPELINES[pipeline][name]
    runs = set().union(*(cli_closure(c) for c in ((commands,) if isinstance(commands, str) else commands)))
    assert listed == runs, (
        f"{pipeline} stage {name!r}: listed but not run: {sorted(listed - runs)}; run but not "
        f"listed: {sorted(runs - listed)}. Its code deps should be:\n"
        + "\n".join(f"        - {d}" for d in sorted(runs))
    )


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_no_stage_depends_on_the_other_scale(pipeline):
    text = (REPO / pipeline).read_text()
    assert "embedded." not in text and "paper." not in text  # always `${scale}.`: the selected one


def _paths(entries: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_data_is_tracked_by_files_not_media_folders(pipeline):
    """No stage hashes (dep) or owns (out) a folder of media or frames (millions of files at the
    paper scale): the manifest pins what arrived, the index what was stored (a sha256 each)."""
    stages = yaml.safe_load((REPO / pipeline).read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for path in _paths(body.get("deps", [])) + _paths(body.get("outs", [])):
            parts = path.split("/")
            assert not ({"raw", "frames"} & set(parts[:-1] + [parts[-1]])), f"{pipeline} {name}: {path}"


def test_downloads_and_extractions_out_manifest_and_index_files():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert _paths(stages["download"]["do"]["outs"]) == ["data/manifest/${item}.jsonl"]
    assert _paths(stages["extract"]["do"]["outs"]) == [
        "data/index/${item}.jsonl",
        "data/index/${item}.bad.jsonl",
        "data/index/${item}.truth.jsonl",
    ]
    # the stages reading frames see the index (its sha256 per stored clip), never the store
    assert "data/index/webvid.jsonl" in _stage_deps(stages["pretrain"])


def test_code_closure_sees_lazy_imports():
    runs = cli_closure("evaluate")
    assert "rap/model/rap.py" in runs  # imported inside run_evaluation
    assert "rap/launch.py" in runs  # imported inside the CLI's torchrun relaunch
    assert not any(p.startswith("rap/training/") for p in runs)  # evaluation never loads the engine
    assert not any(p.startswith("rap/reports/") for p in cli_closure("pretrain"))
    assert "rap/data/download.py" not in cli_closure("pretrain")


def test_every_selected_scale_param_exists_in_both_scales():
    """DVC stops on a params key missing from params.yaml: each `${scale}.` key dvc.yaml names
    must be written out in the embedded and the paper block (defaults do not count)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    text = (REPO / "dvc.yaml").read_text()
    keys = set(re.findall(r"\$\{scale\}\.([\w.]+)(?!\$)", text))
    # a key naming the foreach item (`${scale}.data.${item}`): every dataset's
    keys |= {f"{k}{d}" for k in re.findall(r"\$\{scale\}\.([\w.]+)\$\{item\}", text) for d in ALL_DATASETS}
    assert keys
    for scale in ("embedded", "paper"):
        for key in keys:
            block = raw[scale]
            for part in key.split("."):
                assert isinstance(block, dict) and part in block, f"params.yaml has no {scale}.{key}"
                block = block[part]
