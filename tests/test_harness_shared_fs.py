"""Shared cluster filesystems: run locks where flock is refused, and files readable as the umask says.

Lustre without `-o flock` and some NFS set-ups answer flock with ENOSYS / ENOLCK / EOPNOTSUPP; here
`fcntl.flock` is made to fail that way (in this process and in a holder subprocess).
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.status import State, run_status
from scnet.engine import run_lock as locking
from scnet.engine.run_lock import LockUnavailableError, RunLock, lock_holder
from scnet.records.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]

NO_FLOCK = """
import errno, fcntl, sys
def refuse(fd, op):
    raise OSError(errno.{name}, "flock refused")
fcntl.flock = refuse
from scnet.engine.run_lock import RunLock
lock = RunLock(sys.argv[1])
print("locked" if lock.try_acquire() else "busy", flush=True)
sys.stdin.read()
"""


def _refuse_flock(monkeypatch, code: int = errno.ENOSYS) -> None:
    def refuse(fd, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", refuse)


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS])
def test_without_flock_the_owner_file_excludes_a_second_process_and_dies_with_its_holder(tmp_path, monkeypatch,
                                                                                         code):
    holder = subprocess.Popen([sys.executable, "-c", NO_FLOCK.format(name=errno.errorcode[code]), str(tmp_path)],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        _refuse_flock(monkeypatch, code)
        contender = RunLock(tmp_path)
        assert not contender.try_acquire()
        assert f"pid={holder.pid}" in (lock_holder(tmp_path) or "")
        assert run_status(tmp_path).state is State.RUNNING
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without releasing: the owner file stays behind
        holder.wait()
    assert (RunDir(tmp_path).lock_owner_file).exists()
    assert lock_holder(tmp_path) is None  # same host, dead pid: stale
    lock = RunLock(tmp_path)
    assert lock.try_acquire() and lock.uses_fallback
    assert f"pid={os.getpid()}" in (lock_holder(tmp_path) or "")
    lock.release()
    assert not (RunDir(tmp_path).lock_owner_file).exists() and lock_holder(tmp_path) is None


def test_an_owner_file_from_another_host_is_stale_only_without_heartbeat(tmp_path, monkeypatch):
    _refuse_flock(monkeypatch)
    owner = RunDir(tmp_path).lock_owner_file
    owner.write_text("pid=1 host=some-other-node since=2026-01-01T00:00:00 lock=owner-file token=x\n")
    assert not RunLock(tmp_path).try_acquire()  # refreshed just now: alive
    assert "host=some-other-node" in (lock_holder(tmp_path) or "")
    old = time.time() - locking.STALE_S - 5
    os.utime(owner, (old, old))
    assert lock_holder(tmp_path) is None
    lock = RunLock(tmp_path)
    assert lock.try_acquire()
    assert f"host={socket.gethostname()}" in owner.read_text()
    lock.release()


def test_the_fallback_holder_refreshes_its_owner_file(tmp_path, monkeypatch):
    _refuse_flock(monkeypatch)
    monkeypatch.setattr(locking, "HEARTBEAT_S", 0.05)
    lock = RunLock(tmp_path)
    assert lock.try_acquire()
    owner = RunDir(tmp_path).lock_owner_file
    os.utime(owner, (0, 0))
    for _ in range(200):
        if owner.stat().st_mtime > 0:
            break
        time.sleep(0.01)
    assert owner.stat().st_mtime > 0
    lock.release()


def test_a_flock_holder_respects_a_live_owner_file(tmp_path):
    """A node whose mount has flock must not take a run that a no-flock node holds."""
    (RunDir(tmp_path).lock_owner_file).write_text(f"pid={os.getpid()} host={socket.gethostname()} lock=owner-file\n")
    assert not RunLock(tmp_path).try_acquire()
    (RunDir(tmp_path).lock_owner_file).unlink()
    lock = RunLock(tmp_path)
    assert lock.try_acquire() and not lock.uses_fallback
    lock.release()


def test_no_flock_and_no_exclusive_create_stops_with_a_clear_message(tmp_path, monkeypatch):
    _refuse_flock(monkeypatch, errno.ENOLCK)
    real_open = os.open

    def no_excl(path, flags, *args):
        if flags & os.O_EXCL:
            raise OSError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_excl)
    with pytest.raises(LockUnavailableError, match="refuses flock .*exclusive lock file cannot be created"):
        RunLock(tmp_path).try_acquire()


def test_other_flock_errors_stop_with_a_message_not_a_traceback(tmp_path, monkeypatch):
    _refuse_flock(monkeypatch, errno.EIO)
    with pytest.raises(LockUnavailableError, match="cannot lock the run directory"):
        RunLock(tmp_path).try_acquire()


# --------------------------------------------------------------------------------------------- umask

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_results_tables_and_checkpoints_follow_the_umask(tmp_path, umask, mode):
    import torch

    from scnet.engine.checkpoint import save_checkpoint
    from scnet.records.files import write_json_atomic, write_text_atomic

    previous = os.umask(umask)
    try:
        written = [write_json_atomic(tmp_path / "result.json", {"a": 1}),
                   write_text_atomic(tmp_path / "table2.md", "| a |\n"),
                   save_checkpoint(tmp_path / "last.pth", {"w": torch.zeros(1)})]
    finally:
        os.umask(previous)
    for path in written:
        assert stat.S_IMODE(Path(path).stat().st_mode) == mode, path
