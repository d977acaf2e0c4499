"""Atomic file writes, the one implementation every writer of the package uses (checkpoints, run
and metrics files, the frame store and index, the synthetic corpus and its markers, trimmed
annotation files).

The content goes to a hidden temporary file in the destination's directory, which then replaces
the destination (``os.replace``, atomic on POSIX): a process killed at any moment leaves the old
file or the complete new one, never a torn one, and a rerun never mistakes a half-written file
for a finished one. The standard library only: the data modules use it without importing torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

__all__ = ["atomic_write", "write_json_atomic", "write_text_atomic"]


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], None], *, fsync: bool = True) -> Path:
    """Write ``data`` (bytes, or a callback writing into the binary file it is given) to ``path``
    atomically, creating the parent directories; returns ``path``.

    ``fsync`` also flushes the file to the disk before the rename, so that a power cut cannot
    leave an empty file under the final name; bulk writers of many small files (frames, the
    synthetic media) pass False: a kill cannot tear them either way, and a power cut after a
    successful run is not what they guard against."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str, *, encoding: str = "utf-8", errors: str = "strict") -> Path:
    """``Path.write_text``, atomically (no newline translation: the bytes are ``text`` encoded)."""
    return atomic_write(path, text.encode(encoding, errors))


def write_json_atomic(data: Any, path: str | Path) -> Path:
    """``data`` as indented JSON to ``path``, atomically: readers never see half a file (the
    run files of training and the metrics files of evaluation)."""
    return atomic_write(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
