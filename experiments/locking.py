"""One lock per run directory, so two harness invocations never train the same run at once.

The lock is `fcntl.flock` on `RUN_DIR/run.lock`. The kernel drops it when the holding process dies
(however it dies), so a crashed run never leaves a stale lock behind; the holder's pid and host are
written into the file only to tell the user who holds it. A lock file descriptor may be inherited by
a child process (the local executor passes it to `python -m scnet.train`), which then keeps the run
locked for as long as it lives, even if the harness that started it is killed.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "run.lock"
_PROBE_RETRIES = 3


class RunLock:
    """A non-blocking exclusive lock on a run directory."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def fileno(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"{self.path}: lock not held")
        return self._fd

    def try_acquire(self) -> bool:
        """Take the lock if free; False (without waiting) if another open file holds it."""
        if self._fd is not None:
            return True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        # A few quick retries: `lock_holder` probes hold a shared lock for an instant.
        for attempt in range(_PROBE_RETRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == _PROBE_RETRIES - 1:
                    os.close(fd)
                    return False
                time.sleep(0.02)
        self._fd = fd
        self.describe_holder(os.getpid())
        return True

    def describe_holder(self, pid: int) -> None:
        """Record who holds the lock (the harness, or the child it handed the lock to)."""
        fd = self.fileno()
        text = f"pid={pid} host={socket.gethostname()} since={time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)

    def inheritable_fd(self) -> int:
        """The lock's descriptor, made inheritable for `subprocess.Popen(pass_fds=...)`."""
        fd = self.fileno()
        os.set_inheritable(fd, True)
        return fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        if not self.try_acquire():
            raise RunLockedError(self.run_dir, lock_holder(self.run_dir))
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunLockedError(RuntimeError):
    """The run is being trained by another live process."""

    def __init__(self, run_dir: Path, holder: str | None) -> None:
        super().__init__(f"{run_dir}: locked by another process ({holder or 'holder unknown'})")
        self.run_dir = run_dir
        self.holder = holder


def lock_holder(run_dir: str | os.PathLike) -> str | None:
    """Who holds the run's lock ('pid=.. host=.. since=..'), or None when nobody does.

    Probing takes a shared lock for an instant; if that fails, someone holds the exclusive one.
    """
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 256, 0).decode(errors="replace").strip()
            return text or "holder unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
