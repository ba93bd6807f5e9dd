"""Local-subprocess executor (the default): `python -m scnet.train` per run, output to RUN_DIR/log.txt.

The harness takes the run's lock and hands the locked descriptor to the child, so the run stays
locked for exactly as long as the training process lives, even if the harness is killed. With
`wait=False` the same queue runs in a detached process (`python -m experiments.executors.local`),
which re-checks each run's status before starting it, so overlapping invocations never train a run
twice.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from experiments.executors.base import Executor, OnEnd
from experiments.locking import RunLock
from experiments.status import LOG_FILE, RunStatus, State, last_iteration, run_status, write_attempt
from scnet.records import RecordError, read_config, read_result

POLL_S = 0.5


@dataclass
class _Child:
    run_dir: Path
    proc: subprocess.Popen
    lock: RunLock
    log: IO[bytes]
    bar: Any = field(default=None)


def _total_iters(run_dir: Path) -> int | None:
    try:
        schedule = read_config(run_dir).get("schedule", {})
    except Exception:
        return None
    return schedule.get("max_iters")


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, jobs: int = 1, progress: bool = True, python: str = sys.executable,
                 queue_log_dir: Path | None = None) -> None:
        self.jobs = max(1, jobs)
        self.progress = progress
        self.python = python
        self.queue_log_dir = queue_log_dir

    def _child_env(self) -> dict[str, str]:
        """Share the cores between the runs trained at once: OpenMP threads oversubscribed across
        processes make small CPU convolutions many times slower than one thread each."""
        env = dict(os.environ)
        if "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.jobs))
        return env

    def command(self, run_dir: Path) -> list[str]:
        # The harness draws its own progress bars (from metrics.jsonl); keep the log free of them.
        return [self.python, "-m", "scnet.train", "--config", str(run_dir / "config.json"), "--out", str(run_dir),
                "--no-progress"]

    # ------------------------------------------------------------------------------------- waiting
    def execute(self, run_dirs: list[Path], *, wait: bool, on_end: OnEnd) -> None:
        if not wait:
            self._detach(run_dirs)
            return
        pending = deque(Path(d) for d in run_dirs)
        active: dict[Path, _Child] = {}
        overall = tqdm(total=len(pending), desc="runs", unit="run", disable=not self.progress, position=0)
        try:
            while pending or active:
                while pending and len(active) < self.jobs:
                    run_dir = pending.popleft()
                    child = self._start(run_dir, on_end)
                    if child is None:
                        overall.update(1)
                        continue
                    active[run_dir] = child
                    if self.progress:
                        child.bar = tqdm(total=_total_iters(run_dir), desc=run_dir.name, unit="it",
                                         position=len(active), leave=False)
                time.sleep(POLL_S)
                for run_dir, child in list(active.items()):
                    if child.bar is not None:
                        at = last_iteration(run_dir)
                        if at is not None and at > child.bar.n:
                            child.bar.update(at - child.bar.n)
                    code = child.proc.poll()
                    if code is None:
                        continue
                    del active[run_dir]
                    if child.bar is not None:
                        child.bar.close()
                    on_end(self._finish(child, code))
                    overall.update(1)
        finally:
            for child in active.values():  # interrupted: leave nothing running behind a dead harness
                child.proc.terminate()
                child.proc.wait()
                self._finish(child, child.proc.returncode)
            overall.close()

    def _start(self, run_dir: Path, on_end: OnEnd) -> _Child | None:
        status = run_status(run_dir)
        if status.state is State.DONE or status.state is State.RUNNING:
            on_end(status)
            return None
        lock = RunLock(run_dir)
        if not lock.try_acquire():
            on_end(run_status(run_dir))
            return None
        log = open(run_dir / LOG_FILE, "ab")
        try:
            proc = subprocess.Popen(self.command(run_dir), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, pass_fds=(lock.fileno(),), env=self._child_env())
        except OSError as exc:
            log.close()
            write_attempt(run_dir, "failed", self.name, error=f"cannot start {self.python}: {exc}")
            lock.release()
            on_end(run_status(run_dir))
            return None
        lock.describe_holder(proc.pid)
        write_attempt(run_dir, "started", self.name, child_pid=proc.pid)
        return _Child(run_dir, proc, lock, log)

    def _finish(self, child: _Child, code: int) -> RunStatus:
        child.log.close()
        if code == 0 and _has_valid_result(child.run_dir):
            write_attempt(child.run_dir, "finished", self.name)
        else:
            reason = _exit_reason(code) if code != 0 else "exited with status 0 but wrote no valid result.json"
            write_attempt(child.run_dir, "failed", self.name,
                          error=f"python -m scnet.train {reason}", exit_code=code)
        child.lock.release()  # the child is gone; only now may another process take the run
        return run_status(child.run_dir)

    # ------------------------------------------------------------------------------------ detached
    def _detach(self, run_dirs: list[Path]) -> None:
        """Run the queue in a background process that outlives this one."""
        log_dir = self.queue_log_dir or Path(run_dirs[0]).parent / ".local-queue"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{time.strftime('%Y%m%d-%H%M%S')}.log"
        command = [self.python, "-m", "experiments.executors.local", "--jobs", str(self.jobs),
                   *[str(d) for d in run_dirs]]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        for run_dir in run_dirs:
            if run_status(run_dir).state in (State.PENDING, State.FAILED):
                write_attempt(Path(run_dir), "queued", self.name, queue_pid=proc.pid, queue_log=str(log_path))
        self.detached_log = log_path


def _has_valid_result(run_dir: Path) -> bool:
    """Asked by the lock's holder itself, to which `run_status` would answer 'running'."""
    try:
        read_result(run_dir)
        return True
    except RecordError:
        return False


def main(argv: list[str] | None = None) -> int:
    """The detached queue: train the given run directories one after another (or --jobs at once)."""
    parser = argparse.ArgumentParser(prog="python -m experiments.executors.local")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)

    def report(status: RunStatus) -> None:
        print(f"{time.strftime('%H:%M:%S')} {status.run_dir.name}: {status.state.value} {status.detail}", flush=True)

    LocalExecutor(jobs=args.jobs, progress=False).execute(args.run_dirs, wait=True, on_end=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
