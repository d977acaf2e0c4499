"""The tracking spool: what a stage could not log to MLflow, kept in a local file and replayed.

A stage whose MLflow call fails (server down, network cut, SQLite lock or NFS error) goes on
training; :mod:`rap.tracking` writes every record it could not deliver as one JSON line to
``<run dir>/mlflow-spool.jsonl`` and :func:`replay` delivers them later - from the running
stage as soon as the server answers again, or by hand with ``rap tracking sync RUN_DIR``.

Records (``op``; ``run`` is a real MLflow run id, or ``local-<hex>`` for a stage that could not
even create its run):

* ``start`` - create the stage's run: experiment, run name, tags, the pipeline key of its parent
  (found or created as :mod:`rap.tracking` does) or the run it nests in, start time;
* ``params`` / ``metrics`` (with step and the time it was measured) / ``tags``;
* ``artifact`` (a file or directory still on disk), ``text``, ``dict``;
* ``end`` - the stage's status and end time, and the parent's status after it.

A refused record goes to ``<spool name>.rejected.jsonl`` beside the spool.

Replay goes in file order. A record the server refuses (it answered, with an error: e.g. a
param logged twice with different values) is moved to the rejected file with the
error, never dropped; a connection failure stops the replay and keeps the rest for next time.
Metrics keep their original timestamps, so the history reads as if nothing had happened.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from rap.atomic import write_text_atomic

__all__ = ["SPOOL_FILE", "Spool", "ReplayStopped", "local_run_id", "spool_path", "spool_files"]

log = logging.getLogger(__name__)

SPOOL_FILE = "mlflow-spool.jsonl"  # a run directory's; one evaluation's: <metrics file stem>.mlflow-spool.jsonl
LOCAL_PREFIX = "local-"


class ReplayStopped(RuntimeError):
    """The store could not be reached during a replay; the undelivered records are kept."""


def local_run_id() -> str:
    return f"{LOCAL_PREFIX}{uuid.uuid4().hex}"


def spool_path(place: str | Path) -> Path:
    """The spool file of a run directory (a spool file itself is taken as it is)."""
    path = Path(place)
    return path if path.name.endswith(SPOOL_FILE) else path / SPOOL_FILE


def spool_files(place: str | Path) -> list[Path]:
    """Every spool file of a directory (a run's, and its evaluations'), or the one given."""
    path = Path(place)
    if path.is_dir():
        return sorted(path.glob(f"*{SPOOL_FILE}"))
    return [path] if path.exists() else []


class Spool:
    """One spool file; appends and replays hold an exclusive lock on its directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = spool_path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on the spool's directory (no lock file left behind)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, allow_nan=True) + "\n"
        with self._locked(), self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill mid-write: the rest is intact
                log.warning("%s:%d: unreadable spool line skipped: %.80s", self.path, n, line)
        return out

    def __len__(self) -> int:
        return len(self.records())

    def replay(
        self, deliver: Callable[[dict[str, Any], dict[str, str]], None], is_refusal: Callable[[Exception], bool]
    ) -> dict[str, str]:
        """Deliver every record in order; returns ``{local id: real run id}`` of the runs created.

        ``deliver(record, ids)`` performs one record (``ids`` maps local ids to real ones and
        is updated by ``start`` records); an exception for which ``is_refusal`` is true moves the
        record to the rejected file; any other stops the replay with :class:`ReplayStopped`,
        leaving the undelivered records (and the id map, as ``alias`` records) in the spool.
        The spool file is removed once everything is delivered.
        """
        ids: dict[str, str] = {}
        with self._locked():
            records = self.records()
            for i, record in enumerate(records):
                if record.get("op") == "alias":
                    ids[record["local"]] = record["run"]
                    continue
                try:
                    deliver(record, ids)
                except Exception as err:  # noqa: BLE001 - sorted into refusals and outages below
                    if is_refusal(err):
                        self._reject(record, err)
                        continue
                    rest = [{"op": "alias", "local": k, "run": v} for k, v in ids.items()] + records[i:]
                    write_text_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rest))
                    raise ReplayStopped(f"{self.path}: {len(records) - i} record(s) kept: {err}") from err
            self.path.unlink(missing_ok=True)
        return ids

    def _reject(self, record: dict[str, Any], err: Exception) -> None:
        rejected = self.path.with_name(self.path.name.removesuffix(".jsonl") + ".rejected.jsonl")
        log.warning("MLflow refused a spooled %s record (%s); kept in %s", record.get("op"), err, rejected)
        with rejected.open("a", encoding="utf-8") as f:
            f.write(json.dumps({**record, "error": str(err)[:2000]}, sort_keys=True) + "\n")
