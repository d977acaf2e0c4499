"""Smoke run of the pipeline of record, in a temporary copy of the repository.

The real ``dvc.yaml`` and ``params.yaml`` are used; only the embedded scale is shrunk further
(fewer clips, one epoch, two ablation runs), as a user would do with ``-S``. Checks:
``dvc repro`` produces every table and the figure, a second ``dvc repro`` does nothing, edits
make ``dvc status`` flag only the stages they concern (the other scale's params: none;
rap/reports/: tables and figure; rap/data/transforms.py: training, not download or extract),
``dvc exp run -S lambda=2.0`` reruns pre-training and what depends on it, and nothing else, and
a rerun of download and extract keeps the files a user placed in data/raw and data/frames.

DVC's comparisons, on that same run: git sees exactly the metrics and plots files dvc.yaml
declares under runs/ (so the baseline commit holds them); a second experiment, queued on the
target ``zeroshot@msrvtt``, runs beside the workspace one; ``dvc exp show --json`` then holds
zero-shot MSRVTT R@1 for main and both experiments, ``dvc metrics diff main`` prints numeric
deltas, ``dvc exp diff`` the changed knob, ``dvc plots diff`` the loss curves of both revisions,
and ``rap compare`` one row each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]


def _tiny_params(path: Path) -> None:
    """Shrink the embedded scale in place (what `dvc exp run -S` would do, key by key)."""
    raw = yaml.safe_load(path.read_text())
    emb = raw["embedded"]
    emb["data"]["synthetic_scale"] = 0.2
    emb["pretrain"]["optim"].update(epochs=1, batch_size=8, warmup_steps=2, checkpoint_every=1000)
    emb["finetune"]["epochs"] = {t: 1 for t in emb["finetune"]["epochs"]}
    emb["finetune"]["optim"].update(batch_size=8)
    raw["ablations"] = ["racl-none", "lambda-2.0"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _completed(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}"
    return proc


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    proc = _completed(cmd, cwd, env, timeout)
    return proc.stdout + proc.stderr


def _run_json(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """A `dvc ... --json` command's document: stdout only, since DVC warns on stderr (e.g. of the
    declared metrics of a pipeline not run here, controlled/dvc.yaml's)."""
    return json.loads(_completed(cmd, cwd, env).stdout)


def _stages_run(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


def _stale_after(repo: Path, env: dict[str, str], rel: str, edit) -> set[str]:
    """The stages of the default pipeline (dvc.yaml) `dvc status` flags after ``edit`` is applied
    to ``rel``; the file is restored. (The seed repeats, seeds/dvc.yaml, are not run here.)"""
    path = repo / rel
    before = path.read_text()
    path.write_text(edit(before))
    try:
        return set(json.loads(_completed(["dvc", "status", "--json", "dvc.yaml"], repo, env).stdout or "{}"))
    finally:
        path.write_text(before)


def _append_comment(text: str) -> str:
    return text + "\n# an edit\n"


def _check_status_after_edits(repo: Path, env: dict[str, str]) -> None:
    other_scale = _stale_after(
        repo, env, "params.yaml", lambda t: t.replace("    embed_dim: 256", "    embed_dim: 512")
    )
    assert other_scale == set(), f"editing paper.* at scale embedded flagged {sorted(other_scale)}"
    assert _stale_after(repo, env, "rap/reports/tables.py", _append_comment) == {"tables"}
    assert _stale_after(repo, env, "rap/reports/layout.py", _append_comment) == {"tables", "figure"}
    transforms = _stale_after(repo, env, "rap/data/transforms.py", _append_comment)
    assert {"pretrain", "finetune@msvd", "ablation@racl-none", "figure"} <= transforms
    assert not any(s.startswith(("download", "extract")) for s in transforms), sorted(transforms)


def _check_user_files_survive(repo: Path, env: dict[str, str]) -> None:
    placed = [repo / "data/raw/msvd/placed-by-user.txt", repo / "data/frames/msvd/placed-by-user.npy"]
    for p in placed:
        p.write_text("a user's file")
    adapters = repo / "rap/data/adapters.py"
    adapters.write_text(_append_comment(adapters.read_text()))  # a dep of download and extract
    ran = _stages_run(_run(["dvc", "repro", "extract@msvd"], repo, env))
    assert ran == {"download@msvd", "extract@msvd"}, ran
    assert all(p.read_text() == "a user's file" for p in placed)


# A folder that keeps the generated corpus between smoke runs (CI caches it, see
# .github/workflows/ci.yml): `rap download` skips a dataset whose (seed, scale) marker is there,
# so a warm cache saves only the generation; extraction, training and evaluation still run.
SMOKE_DATA_ENV = "RAP_SMOKE_DATA"


def _restore_corpus(repo: Path) -> None:
    cache = Path(os.environ.get(SMOKE_DATA_ENV) or "") / "raw"
    if os.environ.get(SMOKE_DATA_ENV) and cache.is_dir():
        shutil.copytree(cache, repo / "data" / "raw")


def _save_corpus(repo: Path) -> None:
    cache = Path(os.environ.get(SMOKE_DATA_ENV) or "") / "raw"
    if os.environ.get(SMOKE_DATA_ENV) and not cache.is_dir():
        shutil.copytree(repo / "data" / "raw", cache)


# The queued experiment changes an evaluation setting only, so that it runs one stage (the
# cheapest real experiment; the README's sweeps queue knobs such as lambda the same way).
WORKSPACE_EXP, QUEUED = "lambda-2", "rerank-8"
RERANK = "embedded.evaluate.itm_rerank_k"
ZS_MSRVTT = "runs/eval/zeroshot/msrvtt.json"


def _declared_metrics_and_plots(repo: Path, env: dict[str, str]) -> set[str]:
    """The metrics and plots files dvc.yaml and seeds/dvc.yaml declare that the workspace has."""
    metrics = _run_json(["dvc", "metrics", "show", "--json"], repo, env)
    plots = _run_json(["dvc", "plots", "show", "--json", "--split"], repo, env)
    (workspace,) = metrics.values()  # the one revision shown (DVC names it "" or "workspace")
    # files that exist: DVC also lists declared ones it could not find (the seed repeats, not run)
    found = {path for path, entry in workspace["data"].items() if "data" in entry}
    return found | {path for path, shown in plots["data"].items() if shown}


def _check_git_sees_metrics_only(repo: Path, env: dict[str, str]) -> None:
    """Under runs/, git sees the declared metrics and plots files and nothing else (checkpoints,
    provenance and timings stay ignored); DVC wrote no .gitignore of its own there."""
    untracked = _run(["git", "status", "--porcelain", "--untracked-files=all", "runs"], repo, env)
    seen = {line[3:] for line in untracked.splitlines()}
    declared = {p for p in _declared_metrics_and_plots(repo, env) if p.startswith("runs/")}
    assert ZS_MSRVTT in declared and "runs/pretrain/main/loss.csv" in declared, sorted(declared)
    assert seen == declared, f"git sees {sorted(seen - declared)} too, misses {sorted(declared - seen)}"
    assert not list((repo / "runs").rglob(".gitignore"))


def _number(tree: dict, *keys: str) -> float:
    for key in keys:
        tree = tree[key]
    assert isinstance(tree, (int, float)), tree
    return float(tree)


def _check_comparisons(repo: Path, env: dict[str, str]) -> None:
    from rap.compare import compare_table, experiment_rows

    rows = {r.label: r for r in experiment_rows(_run_json(["dvc", "exp", "show", "--json"], repo, env))}
    assert {"main", WORKSPACE_EXP, QUEUED} <= set(rows), sorted(rows)
    r1 = {label: _number(rows[label].metrics[ZS_MSRVTT], "t2v", "R@1") for label in ("main", WORKSPACE_EXP, QUEUED)}
    assert [rows[label].params["lambda"] for label in r1] == [1.0, 2.0, 1.0]
    assert [rows[label].params[RERANK] for label in r1] == [16, 16, 8]
    assert rows[QUEUED].state == rows[WORKSPACE_EXP].state == "success"

    diff = _run_json(["dvc", "metrics", "diff", "main", "--json"], repo, env)
    deltas = [v["diff"] for f in diff.values() for v in f.values() if isinstance(v.get("diff"), (int, float))]
    assert any(d != 0 for d in deltas), diff  # the workspace holds the lambda=2.0 run
    printed = _run(["dvc", "metrics", "diff", "main"], repo, env)
    number = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"
    assert re.search(rf"^\S+\s+\S+\s+{number}\s+{number}\s+{number}\s*$", printed, re.M), printed
    exp_diff = _run_json(["dvc", "exp", "diff", QUEUED, WORKSPACE_EXP, "--json"], repo, env)
    assert exp_diff["params"]["params.yaml"] == {
        "lambda": {"old": 1.0, "new": 2.0, "diff": 1.0},
        RERANK: {"old": 8, "new": 16, "diff": 8},
    }
    plots = _run_json(["dvc", "plots", "diff", "main", WORKSPACE_EXP, "--json"], repo, env)["data"]
    loss = plots["runs/pretrain/main/loss.csv"][0]
    assert set(loss["revisions"]) == {"main", WORKSPACE_EXP}, loss["revisions"]
    points = json.dumps(loss["content"])  # the filled Vega-Lite spec: one point per (rev, step)
    assert '"rev": "main"' in points and f'"rev": "{WORKSPACE_EXP}"' in points, points[:2000]

    # rap compare's Markdown table, then the MLflow runs table's address (id 1 in a new store,
    # as README's link says)
    printed = _run(["rap", "compare", "--mlflow-ui", "http://127.0.0.1:5000"], repo, env)
    assert printed.rstrip().endswith("MLflow runs: http://127.0.0.1:5000/#/experiments/1/runs"), printed
    lines = [[cell.strip() for cell in line.strip("|").split("|")] for line in printed.splitlines() if line[:1] == "|"]
    table = {cells[0]: dict(zip(lines[0], cells)) for cells in lines[2:]}
    for label, value in r1.items():
        assert table[label]["lambda"] == repr(rows[label].params["lambda"])
        assert table[label][RERANK] == str(rows[label].params[RERANK])
        assert table[label]["zero-shot msrvtt R@1"].startswith(f"{value:.1f} ("), table[label]
        assert 0.0 <= float(table[label]["patch AUC (msrvtt)"]) <= 1.0
    # the targeted experiment ran zero-shot MSRVTT only: its commit's other metrics are main's
    assert table[QUEUED]["zero-shot didemo R@1"] == table[QUEUED]["fine-tuned msvd R@1"] == "not run"
    assert table[WORKSPACE_EXP]["fine-tuned msvd R@1"] not in ("", "not run")
    headers, _ = compare_table(list(rows.values()))
    assert "seed" not in headers and "embedded.model.embed_dim" not in headers  # equal in every row


def copy_repo(dst: Path, **env_extra: str) -> dict[str, str]:
    """The repository's tracked and untracked-not-ignored files (no reports, data or runs) copied
    to ``dst`` with the embedded scale shrunk, as a new git repository (not yet committed);
    returns the environment its commands run in (``env_extra`` added)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file() and not rel.startswith(("reports/", "data/", "runs/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    _tiny_params(dst / "params.yaml")
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "GIT_AUTHOR_NAME": "rap test",
        "GIT_AUTHOR_EMAIL": "test@rap.invalid",
        "GIT_COMMITTER_NAME": "rap test",
        "GIT_COMMITTER_EMAIL": "test@rap.invalid",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        **env_extra,
    }
    env.pop("DVC_STAGE", None)
    _run(["git", "init", "-q", "-b", "main"], dst, env)
    return env


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    dst = tmp_path_factory.mktemp("pipeline") / "rap"
    # the real pipeline logs, into the copy's own store
    env = copy_repo(dst, MLFLOW_TRACKING_URI=f"sqlite:///{dst / 'mlflow.db'}", RAP_TRACKING="1")
    _restore_corpus(dst)
    _run(["git", "add", "-A"], dst, env)
    _run(["git", "commit", "-qm", "smoke"], dst, env)
    return dst, env


def test_repro_then_noop_then_experiment(repo_copy):
    repo, env = repo_copy
    first = _run(["dvc", "repro"], repo, env, timeout=1500)
    _save_corpus(repo)
    for i in range(1, 10):
        table = repo / "reports" / f"table{i}.md"
        assert table.is_file(), f"{table} missing after dvc repro"
        assert "this run" in table.read_text()
    # the embedded corpus has a ground truth: Table 9 holds measured localisation scores
    assert "no ground truth" not in (repo / "reports" / "table9.md").read_text()
    zeroshot = json.loads((repo / "runs/eval/zeroshot/msrvtt.json").read_text())
    assert 0.0 <= zeroshot["localisation"]["patch"]["paper"]["auc"] <= 1.0
    assert (repo / "reports" / "README.md").is_file()
    assert (repo / "reports" / "figure3.png").stat().st_size > 1000
    assert "pretrain" in _stages_run(first)

    second = _run(["dvc", "repro"], repo, env)
    assert _stages_run(second) == set(), f"second dvc repro was not a no-op:\n{second[-3000:]}"
    _check_status_after_edits(repo, env)

    _check_git_sees_metrics_only(repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "first repro"], repo, env)
    # queued from the clean baseline, before the workspace run below rewrites params.yaml;
    # a queued run sees git-tracked files only: the data (git-ignored) is copied in
    _run(
        ["dvc", "exp", "run", "--queue", "-n", QUEUED, "-S", f"{RERANK}=8", "-C", "data", "zeroshot@msrvtt"], repo, env
    )
    exp = _run(["dvc", "exp", "run", "-n", WORKSPACE_EXP, "-S", "lambda=2.0"], repo, env, timeout=1500)
    ran = _stages_run(exp)
    expected = (
        {"pretrain", "tables", "figure"}
        | {f"zeroshot@{d}" for d in ("msrvtt", "didemo", "msvd", "lsmdc")}
        | {f"{s}@{t}" for s in ("finetune", "finetuned") for t in ("msrvtt-7k", "msrvtt-9k", "didemo", "msvd", "lsmdc")}
    )
    assert ran == expected, f"unexpected stages: extra {ran - expected}, missing {expected - ran}"
    assert not any(s.startswith(("ablation", "download", "extract")) for s in ran)

    queued = _stages_run(_run(["dvc", "exp", "run", "--run-all", "-j", "1"], repo, env, timeout=900))
    assert queued == {"zeroshot@msrvtt"}, queued  # the copied data and cached checkpoint are up to date
    _check_comparisons(repo, env)
    _check_user_files_survive(repo, env)
