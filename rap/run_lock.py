"""One writer per output: the lock a training run holds on its directory, and an evaluation on
its metrics file, for as long as it writes there.

Two ``rap pretrain --out runs/x`` at once (a user relaunching; SLURM requeueing a job while the
old one still runs on a node it declared dead) would both resume from the same step checkpoint
and both write ``checkpoint.pt``, the step checkpoints and ``loss.csv``. The lock file
(``<out>/rap.lock``; an evaluation's: ``<metrics>.json.lock``) holds the holder's host, pid,
the pid's start time (a reused pid is not mistaken for the holder), SLURM job id, command and a
heartbeat that a thread refreshes every :data:`HEARTBEAT_S` seconds.

The rules, applied by :func:`acquire` (and by :func:`check_free`, the CLI's early look):

- no lock file: take it;
- the holder is provably gone (this host, and its pid no longer runs the process that took
  the lock): take it over, saying so;
- the holder runs on this host: stop, naming it; ``force`` does not override a live process;
- the holder is on another host, where rap cannot check it (a shared filesystem): stop, naming
  it with the age of its heartbeat; ``force`` (``--resume force``) takes the lock over
  deliberately, after the user has checked that the holder is gone.

Every change of the lock file (create, take over, refresh, release) happens under an exclusive
POSIX lock (``lockf``: NFS supports it, a forked loader worker does not inherit it) of
``.<lock>.guard``, so two takeovers cannot both win and a released or refreshed lock is always
the releaser's own. The lock file itself appears whole (``os.link`` of a complete temporary
file, which fails when the name exists). A holder whose lock was taken over notices at its next
refresh (:attr:`RunLock.lost`) and stops before its next checkpoint. The standard library only.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from rap.errors import RapError

__all__ = ["HEARTBEAT_S", "RunLocked", "LockLost", "RunLock", "lock_path", "acquire", "check_free"]

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0  # how often a holder refreshes its heartbeat
LOCK_NAME = "rap.lock"


class RunLocked(RapError):
    """Another process holds the output's lock."""


class LockLost(RapError):
    """This process's lock was taken over by another one (``--resume force`` elsewhere)."""


def lock_path(out: Path, *, is_file: bool = False) -> Path:
    """``<out>/rap.lock`` for a run directory; ``<out>.lock`` beside an output file."""
    out = Path(out)
    return out.with_name(out.name + ".lock") if is_file else out / LOCK_NAME


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22): with
    the pid, it names one process; None where there is no /proc or no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "(comm)": state is field 3


def _me(what: str) -> dict[str, Any]:
    slurm = {k.lower(): os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT") if k in os.environ}
    return {
        "what": what,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
        **slurm,
        "command": " ".join(sys.argv),
        "started": _now(),
        "heartbeat": _now(),
        "token": uuid.uuid4().hex,
    }


def _read(path: Path) -> dict[str, Any] | None:
    """The lock's content; None when there is no lock file; ``{}`` when it cannot be parsed."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _alive_here(holder: dict[str, Any]) -> bool:
    """Whether the holder (on this host) still runs: its pid exists and is the same process."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True  # unreadable: not provably gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    recorded = holder.get("pid_start")
    return recorded is None or _process_start(pid) in (None, recorded)


def _heartbeat_age(holder: dict[str, Any]) -> float | None:
    try:
        beat = _dt.datetime.fromisoformat(holder["heartbeat"])
    except (KeyError, TypeError, ValueError):
        return None
    return (_dt.datetime.now(_dt.timezone.utc) - beat).total_seconds()


def _describe(holder: dict[str, Any]) -> str:
    parts = [f"{holder.get('what', 'rap')} on host {holder.get('host', '?')}, pid {holder.get('pid', '?')}"]
    if "slurm_job_id" in holder:
        parts.append(f"SLURM job {holder['slurm_job_id']}")
    parts.append(f"started {holder.get('started', '?')}")
    age = _heartbeat_age(holder)
    if age is not None:
        parts.append(f"last heartbeat {age:.0f} s ago")
    if holder.get("command"):
        parts.append(f"command: {holder['command']}")
    return "; ".join(parts)


@dataclass(frozen=True)
class _Verdict:
    take: bool  # the lock may be taken (over)
    reason: str  # why: for the log, or the refusal's message


def _judge(path: Path, holder: dict[str, Any] | None, force: bool, how_to_force: str) -> _Verdict:
    if holder is None:
        return _Verdict(True, "free")
    if not holder:
        if force:
            return _Verdict(True, f"unreadable lock {path} taken over ({how_to_force})")
        return _Verdict(False, f"{path} exists but cannot be read; if no rap process writes there, {how_to_force}")
    who = _describe(holder)
    if holder.get("host") == socket.gethostname():
        if not _alive_here(holder):
            return _Verdict(True, f"the holder of {path} is gone (pid {holder.get('pid')} no longer runs): {who}")
        return _Verdict(
            False,
            f"{path.parent} is in use by a process that still runs on this host: {who}. Wait for it to "
            f"finish, stop it (kill {holder.get('pid')}), or use another output path",
        )
    if force:
        return _Verdict(True, f"lock {path} taken over deliberately ({how_to_force}) from {who}")
    return _Verdict(
        False,
        f"{path.parent} is in use by a process on another host, which rap cannot check: {who}. Wait for "
        f"it to finish or use another output path; if you have checked that it is gone (e.g. `squeue -j "
        f"{holder.get('slurm_job_id', 'JOBID')}`, `ssh {holder.get('host')} ps -p {holder.get('pid')}`), "
        f"{how_to_force}",
    )


@contextlib.contextmanager
def _guard(path: Path) -> Iterator[None]:
    """Exclusive POSIX lock of ``.<lock>.guard`` around a change of the lock file (per process:
    the heartbeat thread and :meth:`RunLock.release` never overlap, release joins the thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.guard"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _create(path: Path, content: dict[str, Any]) -> bool:
    """Make ``path`` appear whole with ``content``; False when it already exists."""
    tmp = path.with_name(f".{path.name}.{content['token']}")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def _replace(path: Path, content: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{content['token']}")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


class RunLock:
    """A held lock: refreshes its heartbeat in a daemon thread until :meth:`release`."""

    def __init__(self, path: Path, content: dict[str, Any], heartbeat_s: float) -> None:
        self.path, self.content = path, content
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), name="rap-lock-heartbeat", daemon=True)
        self._thread.start()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self) -> None:
        """Raise :class:`LockLost` when another process took the lock over."""
        if self.lost:
            raise LockLost(
                f"the lock {self.path} was taken over by another process ({_describe(_read(self.path) or {})}): "
                "this run stops writing there"
            )

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            with _guard(self.path):
                current = _read(self.path)
                if not current or current.get("token") != self.content["token"]:
                    self._lost.set()
                    log.error("lost the lock %s to %s", self.path, _describe(current or {}))
                    return
                self.content["heartbeat"] = _now()
                _replace(self.path, self.content)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still this process's."""
        self._stop.set()
        self._thread.join()
        with _guard(self.path):
            current = _read(self.path)
            if current and current.get("token") == self.content["token"]:
                self.path.unlink()


def acquire(path: Path, what: str, *, force: bool = False, how_to_force: str = "pass --resume force") -> RunLock:
    """Take the lock at ``path`` by the rules of the module docstring, or raise :class:`RunLocked`."""
    path = Path(path)
    content = _me(what)
    with _guard(path):
        holder = _read(path)
        verdict = _judge(path, holder, force, how_to_force)
        if not verdict.take:
            raise RunLocked(verdict.reason)
        if holder is not None:
            log.warning("taking over: %s", verdict.reason)
            path.unlink(missing_ok=True)
        if not _create(path, content):  # cannot happen under the guard unless a non-rap process made it
            raise RunLocked(f"{path} appeared while taking the lock: {_describe(_read(path) or {})}")
    return RunLock(path, content, HEARTBEAT_S)


def check_free(path: Path, *, force: bool = False, how_to_force: str = "pass --resume force") -> None:
    """Raise :class:`RunLocked` now if :func:`acquire` would (the CLI's look before any work;
    the lock itself is taken where the writing process is known: rank 0 of the run)."""
    path = Path(path)
    verdict = _judge(path, _read(path), force, how_to_force)
    if not verdict.take:
        raise RunLocked(verdict.reason)
