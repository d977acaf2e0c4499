"""CC3M through img2dataset, the field's tool, run from its own virtual environment.

img2dataset 1.47.0 cannot share the project's environment (it needs pandas<3, webdataset<0.3,
albumentations<2) but resolves alone in a fresh Python 3.11 venv (54 packages, no torch):
``make tools`` (and ``rap download cc3m`` itself when it is missing) creates it under
``.tools/img2dataset`` (git-ignored), pinned to :data:`VERSION`.

A run: ``raw/cc3m/img2dataset/input/<run>.tsv`` (the TSV's rows with a header and our key)
-> ``raw/cc3m/img2dataset/<run>/{shard:05d}/<i2d key>.jpg`` and ``{shard:05d}.parquet``
(img2dataset's status record: url, caption, key, status, error_message, width, height, ...
plus our ``rap_key``). ``main`` fetches the whole list; ``retry-NNN`` only the URLs that
failed before (``--retry-failed``). img2dataset's ``incremental`` mode skips finished shards,
so a rerun fetches nothing.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from rap.atomic import write_text_atomic
from rap.config import FetchConfig
from rap.data.fetch import Item
from rap.data.records import DataError

log = logging.getLogger(__name__)

VERSION = "1.47.0"
REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("RAP_IMG2DATASET_VENV", REPO / ".tools" / "img2dataset"))


def executable() -> Path:
    return VENV / "bin" / "img2dataset"


def ensure_venv() -> Path:
    """img2dataset's own venv (created once, ~45 s from PyPI); returns its console script."""
    exe = executable()
    stamp = VENV / f".installed-{VERSION}"
    if exe.is_file() and stamp.is_file():
        return exe
    python = os.environ.get("RAP_TOOLS_PYTHON", "python3.11")
    log.info("creating img2dataset's environment in %s (img2dataset==%s)", VENV, VERSION)
    t0 = time.monotonic()
    try:
        if not (VENV / "bin" / "python").is_file():
            subprocess.run([python, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, f"img2dataset=={VERSION}"], check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise DataError(
            f"could not create img2dataset's environment in {VENV} ({err}); run `make tools` on a machine "
            "with PyPI access, or set data.fetch.cc3m_tool: builtin"
        ) from None
    stamp.touch()
    log.info("img2dataset's environment ready in %.0f s", time.monotonic() - t0)
    return exe


def _write_input(path: Path, items: list[Item]) -> None:
    def clean(text: str) -> str:  # a tab or newline inside a caption would break the TSV
        return " ".join(text.split())

    lines = ["rap_key\turl\tcaption\n"] + [f"{it.key}\t{it.url}\t{clean(it.caption)}\n" for it in items]
    write_text_atomic(path, "".join(lines))


def run(items: list[Item], out: Path, run_name: str, cfg: FetchConfig, min_side: int) -> None:
    """One img2dataset run over ``items`` into ``out/<run_name>``."""
    exe = ensure_venv()
    url_list = out / "input" / f"{run_name}.tsv"
    _write_input(url_list, items)
    args = {
        "url_list": url_list,
        "input_format": "tsv",
        "url_col": "url",
        "caption_col": "caption",
        "save_additional_columns": "[rap_key]",
        "output_format": "files",
        "output_folder": out / run_name,
        "processes_count": cfg.processes,
        "thread_count": cfg.threads,
        "number_sample_per_shard": cfg.shard_size,
        "image_size": min_side,
        "resize_mode": "keep_ratio",  # the short side becomes image_size...
        "resize_only_if_bigger": True,  # ...when larger: nothing is upscaled
        "encode_quality": 95,
        "timeout": max(1, round(cfg.timeout_s)),
        "retries": cfg.retries,
        "incremental_mode": "incremental",
        "compute_hash": "sha256",
        "extract_exif": False,
        "enable_wandb": False,
        "distributor": "multiprocessing",
    }
    cmd = [str(exe), *(f"--{k}={v}" for k, v in args.items())]
    log.info("running %s", " ".join(cmd))
    # never the project's packages in the tool's interpreter; no albumentations update check
    # (a request to PyPI from every worker at import)
    env = {**os.environ, "PYTHONPATH": "", "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0:
        raise DataError(f"img2dataset exited with {proc.returncode} ({' '.join(cmd)})")


def runs(out: Path) -> list[Path]:
    """The run folders in the order they ran (main, retry-001, ...)."""
    return sorted(
        (p for p in out.iterdir() if p.is_dir() and p.name != "input"), key=lambda p: (p.name != "main", p.name)
    )


def statuses(out: Path) -> dict[str, dict]:
    """The latest status of every key over all runs, in our status columns."""
    latest: dict[str, dict] = {}
    for run_dir in runs(out) if out.is_dir() else []:
        for shard in sorted(run_dir.glob("*.parquet")):
            for r in pq.read_table(shard).to_pylist():
                ok = r["status"] == "success"
                path = run_dir / shard.stem / f"{r['key']}.jpg"
                key = r["rap_key"]  # the TSV reader types a 9-digit key as a number
                key = f"{key:09d}" if isinstance(key, int) else str(key)
                latest[key] = {
                    "key": key,
                    "url": r["url"],
                    "caption": r["caption"],
                    "status": "success" if ok else "failed",
                    "error_message": None if ok else r["error_message"],
                    "path": str(path) if ok else None,
                    "digest": None,  # img2dataset hashes the original; the manifest hashes what is stored
                    "bytes": path.stat().st_size if ok else None,
                    "width": r["width"],
                    "height": r["height"],
                }
    return latest


def next_retry_name(out: Path) -> str:
    n = sum(1 for p in runs(out) if p.name.startswith("retry-")) if out.is_dir() else 0
    return f"retry-{n + 1:03d}"
