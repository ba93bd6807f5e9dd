"""The per-run lock between real processes: held while the holder lives, gone when it dies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from experiments.status import State, run_status
from scnet.engine.run_lock import RunLock, lock_holder

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import sys
from scnet.engine.run_lock import RunLock
lock = RunLock(sys.argv[1])
print("locked" if lock.try_acquire() else "busy", flush=True)
sys.stdin.read()  # hold until the test closes our stdin or kills us
"""


def _hold(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_run_locked_by_another_process_is_running_not_started_twice(tmp_path):
    holder = _hold(tmp_path)
    try:
        lock = RunLock(tmp_path)
        assert not lock.try_acquire()
        assert f"pid={holder.pid}" in (lock_holder(tmp_path) or "")
        status = run_status(tmp_path)
        assert status.state is State.RUNNING and f"pid={holder.pid}" in status.detail
        # A second contender in another process is refused too.
        second = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO, input="",
                                capture_output=True, text=True, timeout=60)
        assert second.stdout.strip() == "busy"
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock: no stale lock file blocks the run.
    assert lock_holder(tmp_path) is None
    assert run_status(tmp_path).state is State.PENDING
    lock = RunLock(tmp_path)
    assert lock.try_acquire()
    lock.release()


PARENT = """
import subprocess, sys
from scnet.engine.run_lock import RunLock
lock = RunLock(sys.argv[1])
assert lock.try_acquire()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], pass_fds=(lock.fileno(),))
print(child.pid, flush=True)
child.wait()
"""


def test_a_killed_harness_leaves_the_run_locked_by_its_training_child(tmp_path):
    """The local executor hands the locked descriptor to `python -m scnet.train`; so does this parent."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    child_pid = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait()
        assert lock_holder(tmp_path) is not None
        assert not RunLock(tmp_path).try_acquire()
    finally:
        os.kill(child_pid, signal.SIGKILL)
    for _ in range(100):  # the child is reaped by init; its descriptor closes with it
        if lock_holder(tmp_path) is None:
            break
        time.sleep(0.05)
    assert lock_holder(tmp_path) is None
