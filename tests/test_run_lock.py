"""The lock rules of rap.run_lock, with real processes as holders (a live ``sleep``, a pid that
has exited) and a lock file as another host's holder would leave it. The real ``rap pretrain``
twice on one directory is in tests/test_resume.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from rap import run_lock


def _holder(**fields) -> dict:
    return {
        "what": "pretrain",
        "host": socket.gethostname(),
        "pid": 1,
        "pid_start": None,
        "command": "rap pretrain --out x",
        "started": "2026-01-01T00:00:00+00:00",
        "heartbeat": "2026-01-01T00:00:00+00:00",
        "token": "theirs",
        **fields,
    }


def _write(path, holder) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(holder))


@pytest.fixture
def live_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_take_release_and_a_second_taker_is_refused(tmp_path):
    path = run_lock.lock_path(tmp_path / "run")
    lock = run_lock.acquire(path, "pretrain")
    held = json.loads(path.read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["what"] == "pretrain"
    with pytest.raises(run_lock.RunLocked, match=f"still runs on this host: pretrain on host .*pid {os.getpid()}"):
        run_lock.acquire(path, "pretrain")
    with pytest.raises(run_lock.RunLocked):  # a live holder on this host: force does not override it
        run_lock.check_free(path, force=True)
    lock.release()
    assert not path.exists()
    run_lock.acquire(path, "pretrain").release()


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path, caplog):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = run_lock.lock_path(tmp_path / "run")
    _write(path, _holder(pid=int(gone.stdout)))
    lock = run_lock.acquire(path, "pretrain")
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"pid {int(gone.stdout)} no longer runs" in caplog.text
    lock.release()


def test_a_reused_pid_is_not_the_holder(tmp_path, live_process):
    """The pid runs, but not the process that took the lock (its start time differs)."""
    path = run_lock.lock_path(tmp_path / "run")
    _write(path, _holder(pid=live_process.pid, pid_start="1"))
    run_lock.acquire(path, "pretrain").release()
    _write(path, _holder(pid=live_process.pid, pid_start=run_lock._process_start(live_process.pid)))
    with pytest.raises(run_lock.RunLocked, match=f"kill {live_process.pid}"):
        run_lock.acquire(path, "pretrain")


def test_another_hosts_holder_needs_a_deliberate_takeover(tmp_path):
    path = run_lock.lock_path(tmp_path / "eval.json", is_file=True)
    assert path.name == "eval.json.lock"
    _write(path, _holder(host="node-17", pid=4242, slurm_job_id="991"))
    with pytest.raises(run_lock.RunLocked) as refused:
        run_lock.acquire(path, "evaluate", how_to_force="pass --take-over-lock")
    message = str(refused.value)
    for part in ("another host", "node-17", "pid 4242", "SLURM job 991", "last heartbeat", "squeue -j 991"):
        assert part in message
    assert message.endswith("pass --take-over-lock")
    lock = run_lock.acquire(path, "evaluate", force=True)
    assert json.loads(path.read_text())["token"] == lock.content["token"]
    lock.release()


def test_a_holder_whose_lock_was_taken_over_notices(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    path = run_lock.lock_path(tmp_path / "run")
    lock = run_lock.acquire(path, "pretrain")
    _write(path, _holder(host="node-3", token="usurper"))  # as a --resume force elsewhere leaves it
    lock._thread.join(timeout=10)
    assert lock.lost
    with pytest.raises(run_lock.LockLost, match="taken over by another process"):
        lock.check()
    lock.release()
    assert json.loads(path.read_text())["token"] == "usurper"  # not ours: left in place
