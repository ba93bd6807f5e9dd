"""One lock per run directory, so two processes (harness invocations, `scnet.train`, `scnet.evaluate`)
never work on the same run at once.

The lock is `fcntl.flock` on `RUN_DIR/run.lock`. The kernel drops it when the holding process dies
(however it dies), so a crashed run never leaves a stale lock behind; the holder's pid and host are
written into the file only to tell the user who holds it. A lock file descriptor may be inherited by
a child process (the local executor passes it to `python -m scnet.train`), which then keeps the run
locked for as long as it lives, even if the harness that started it is killed.

Some shared filesystems refuse flock (Lustre mounted without `flock`, some NFS set-ups: ENOLCK,
EOPNOTSUPP, ENOSYS). There the lock falls back to `RUN_DIR/run.lock.owner`, created with O_EXCL
(atomic on NFSv3+ and Lustre) and holding `pid=.. host=..`. Nothing drops that file when its holder
dies, so the holder refreshes its mtime every minute and a contender treats it as stale when the
holder's pid is gone (same host) or the file has not been refreshed for `STALE_S` (another host).
A flock holder also respects a live owner file, so mixed mounts of one filesystem still exclude.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from scnet.records.files import OutputError
from scnet.records.run_dir import RunDir

_PROBE_RETRIES = 3
# flock errors that mean "this filesystem does not do flock", not "someone holds the lock".
FLOCK_UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})
HEARTBEAT_S = 60.0
STALE_S = 15 * 60.0


class LockUnavailableError(OutputError):
    """Neither flock nor an exclusive-create lock file works in the run directory."""


def _holder_text(pid: int, note: str = "") -> str:
    return f"pid={pid} host={socket.gethostname()} since={time.strftime('%Y-%m-%dT%H:%M:%S')}{note}\n"


def _flock_unsupported(exc: OSError) -> bool:
    return not isinstance(exc, BlockingIOError) and exc.errno in FLOCK_UNSUPPORTED


class RunLock:
    """A non-blocking exclusive lock on a run directory."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = RunDir(run_dir).lock_file
        self.owner_path = RunDir(run_dir).lock_owner_file
        self._fd: int | None = None
        self._fallback = False  # True: held through the owner file, not flock
        self._token = ""
        self._stop_heartbeat: threading.Event | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def uses_fallback(self) -> bool:
        """Held through `run.lock.owner` because the filesystem refused flock."""
        return self._fallback

    def fileno(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"{self.path}: lock not held")
        return self._fd

    def try_acquire(self) -> bool:
        """Take the lock if free; False (without waiting) if another process holds it."""
        if self._fd is not None:
            return True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
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
            except OSError as exc:
                os.close(fd)
                if _flock_unsupported(exc):
                    return self._acquire_owner_file(exc)
                raise LockUnavailableError(f"{self.path}: cannot lock the run directory ({exc})") from None
        if _live_owner(self.owner_path) is not None:  # a process on a mount without flock holds it
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            return False
        self._fd = fd
        self.describe_holder(os.getpid())
        return True

    # ------------------------------------------------------------------------------- the fallback
    def _acquire_owner_file(self, cause: OSError) -> bool:
        self._token = uuid.uuid4().hex
        text = _holder_text(os.getpid(), f" lock=owner-file token={self._token}")
        for _ in range(2):  # a stale file is broken once, then creation is retried
            try:
                fd = os.open(self.owner_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except FileExistsError:
                if not _break_if_stale(self.owner_path):
                    return False
                continue
            except OSError as exc:
                raise LockUnavailableError(
                    f"{self.run_dir}: this filesystem refuses flock ({os.strerror(cause.errno)}) and an "
                    f"exclusive lock file cannot be created either ({exc}); put --runs-dir on a filesystem "
                    "with flock (e.g. mount Lustre with -o flock) or one that allows O_EXCL files") from None
            os.pwrite(fd, text.encode(), 0)
            self._fd, self._fallback = fd, True
            self._start_heartbeat()
            return True
        return False

    def _start_heartbeat(self) -> None:
        stop = threading.Event()
        path = self.owner_path

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                try:
                    os.utime(path)
                except OSError:
                    return

        threading.Thread(target=beat, name=f"run-lock-heartbeat {self.run_dir.name}", daemon=True).start()
        self._stop_heartbeat = stop

    # ---------------------------------------------------------------------------------- holders
    def describe_holder(self, pid: int) -> None:
        """Record who holds the lock (the harness, or the child it handed the lock to)."""
        fd = self.fileno()
        note = f" lock=owner-file token={self._token}" if self._fallback else ""
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_text(pid, note).encode(), 0)

    def inheritable_fd(self) -> int:
        """The lock's descriptor, made inheritable for `subprocess.Popen(pass_fds=...)`."""
        fd = self.fileno()
        os.set_inheritable(fd, True)
        return fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if self._fallback:
                if self._stop_heartbeat is not None:
                    self._stop_heartbeat.set()
                if f"token={self._token}" in _read(self.owner_path):  # still ours: not broken as stale
                    self.owner_path.unlink(missing_ok=True)
            else:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd, self._fallback, self._stop_heartbeat = None, False, None

    def __enter__(self) -> "RunLock":
        if not self.try_acquire():
            raise RunLockedError(self.run_dir, lock_holder(self.run_dir))
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunLockedError(RuntimeError):
    """The run is being trained by another live process."""

    def __init__(self, run_dir: Path, holder: str | None) -> None:
        super().__init__(f"{run_dir}: locked by another process ({holder or 'holder unknown'}); wait for it to "
                         "end (or stop it), then run the same command again")
        self.run_dir = run_dir
        self.holder = holder


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _fields(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split() if "=" in part)


def _is_stale(path: Path, text: str) -> bool:
    """A holder on this host is judged by its pid; one elsewhere by the age of its heartbeat."""
    fields = _fields(text)
    if fields.get("host") == socket.gethostname() and fields.get("pid", "").isdigit():
        try:
            os.kill(int(fields["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    return age > STALE_S


def _live_owner(path: Path) -> str | None:
    """The owner file's text if it names a live holder; None if absent or stale."""
    text = _read(path)
    if text:
        return None if _is_stale(path, text) else text
    try:  # empty: a holder between create and write, or one that died there
        fresh = time.time() - path.stat().st_mtime <= STALE_S
    except FileNotFoundError:
        return None
    return "holder unknown (empty run.lock.owner)" if fresh else None


def _break_if_stale(path: Path) -> bool:
    """Remove a stale owner file; False if it is live. The file is renamed aside first and checked
    again, so two contenders breaking the same stale lock cannot both remove a fresh one."""
    text = _read(path)
    if not text or not _is_stale(path, text):
        return False if text else _break_empty(path)
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # someone else broke it; try to create ours
    if _read(aside) != text:  # we moved a fresh lock taken meanwhile: put it back
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def _break_empty(path: Path) -> bool:
    """An empty owner file is a holder that died between create and write; stale after STALE_S."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if age <= STALE_S:
        return False
    path.unlink(missing_ok=True)
    return True


def lock_holder(run_dir: str | os.PathLike) -> str | None:
    """Who holds the run's lock ('pid=.. host=.. since=..'), or None when nobody does.

    Probing takes a shared lock for an instant; if that fails, someone holds the exclusive one.
    Where flock is refused, the owner file answers.
    """
    run_dir = Path(run_dir)
    owner = _live_owner(RunDir(run_dir).lock_owner_file)
    if owner is not None:
        return owner
    path = RunDir(run_dir).lock_file
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
        except OSError as exc:
            if _flock_unsupported(exc):
                return None  # flock cannot be held here; the owner file (absent or stale) said it all
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# ------------------------------------------------------------------------ the command-line tools

INHERITED_LOCK_ENV = "SCNET_RUN_LOCK_FD"


def inherited_lock(run_dir: str | os.PathLike, env: dict[str, str] | None = None) -> bool:
    """Whether this process was handed the run's lock by its parent (the local executor passes the
    locked descriptor and names it in SCNET_RUN_LOCK_FD): then it holds the lock already."""
    raw = (os.environ if env is None else env).get(INHERITED_LOCK_ENV, "")
    if not raw.isdigit():
        return False
    try:
        held, there = os.fstat(int(raw)), os.stat(RunDir(run_dir).lock_file)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def hold_run_lock(run_dir: str | os.PathLike, *, rank: int = 0):
    """The lock a command-line tool holds while it works on `run_dir` (rank 0 only; the other ranks
    of a distributed run follow it). RunLockedError when another process holds it. A folder this
    call creates only for its lock is removed again if the work leaves nothing else in it."""
    if rank != 0 or inherited_lock(run_dir):
        return _Nothing()
    return _CommandLock(Path(run_dir))


class _CommandLock(RunLock):
    def __enter__(self) -> "_CommandLock":
        missing = [folder for folder in (self.run_dir, *self.run_dir.parents) if not folder.exists()]
        self._created = missing[-1] if missing else None  # the outermost folder this call creates
        try:
            return super().__enter__()
        except BaseException:
            self._tidy()
            raise

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._tidy()

    def _tidy(self) -> None:
        if self._created is None:
            return
        try:
            if {p.name for p in self.run_dir.iterdir()} <= {RunDir.LOCK}:
                self.path.unlink(missing_ok=True)
                folder = self.run_dir
                while True:
                    folder.rmdir()  # fails (and stops) on a folder that is not empty
                    if folder == self._created:
                        break
                    folder = folder.parent
        except OSError:
            pass
