"""Local-subprocess executor (the default): `python -m scnet.train` per run, output to RUN_DIR/log.txt.

On a multi-GPU machine a run is trained the way torchrun would: one process per GPU of the run's
group, with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set (the engine reads them)
and CUDA_VISIBLE_DEVICES naming the group, so concurrent runs (--jobs) never share a GPU. If one
rank fails, the others are stopped at once, as torchrun does, instead of waiting in a collective.

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
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from experiments.executors.base import Executor, OnEnd
from experiments.status import RunStatus, State, last_iteration, run_status, write_attempt
from scnet.engine.run_lock import INHERITED_LOCK_ENV, RunLock
from scnet.records.files import RecordError
from scnet.records.result import read_result
from scnet.records.run_dir import RunDir, read_config

POLL_S = 0.5


STOP_GRACE_S = 30.0


@dataclass
class _Child:
    """One run in training: its processes (one per rank) and the GPU group they use."""

    run_dir: Path
    procs: list[subprocess.Popen]
    lock: RunLock
    log: IO[bytes]
    gpus: tuple[str, ...] | None = None
    bar: Any = field(default=None)

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    def poll(self) -> int | None:
        """None while training; else the run's exit code: the first failed rank's, or 0 when all
        ranks succeeded. A failed rank ends the others at once."""
        codes = [proc.poll() for proc in self.procs]
        failed = [code for code in codes if code not in (None, 0)]
        if failed:
            self.stop()
            return failed[0]
        return 0 if all(code == 0 for code in codes) else None

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def visible_gpus() -> list[str]:
    """The CUDA devices this machine lets us use, as CUDA_VISIBLE_DEVICES entries."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # no torch CUDA build, no driver: no GPUs
        return []
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if "CUDA_VISIBLE_DEVICES" in os.environ else [str(i) for i in range(count)]


def gpu_groups(gpus: list[str], per_run: int, jobs: int) -> list[tuple[str, ...]]:
    """`jobs` disjoint groups of `per_run` GPUs (one per run trained at once)."""
    if per_run < 1 or per_run * jobs > len(gpus):
        raise ValueError(f"{jobs} run(s) at once x {per_run} GPU(s) each needs {per_run * jobs} GPUs; "
                         f"{len(gpus)} visible")
    return [tuple(gpus[i * per_run:(i + 1) * per_run]) for i in range(jobs)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
                 queue_log_dir: Path | None = None, processes_per_run: int = 1,
                 gpu_groups: list[tuple[str, ...]] | None = None) -> None:
        """`gpu_groups`: one GPU group per run trained at once (then `jobs` is their number and each
        run has one process per GPU of its group); `processes_per_run` without groups: CPU ranks."""
        self.gpu_groups = [tuple(g) for g in gpu_groups] if gpu_groups else None
        self.jobs = len(self.gpu_groups) if self.gpu_groups else max(1, jobs)
        self.processes_per_run = len(self.gpu_groups[0]) if self.gpu_groups else max(1, processes_per_run)
        self.progress = progress
        self.python = python
        self.queue_log_dir = queue_log_dir
        self._free_groups: deque[tuple[str, ...]] = deque(self.gpu_groups or [])

    def _child_env(self) -> dict[str, str]:
        """Share the cores between the processes trained at once: OpenMP threads oversubscribed
        across processes make small CPU convolutions many times slower than one thread each."""
        env = dict(os.environ)
        if "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (self.jobs * self.processes_per_run)))
        return env

    def _rank_envs(self, gpus: tuple[str, ...] | None) -> list[dict[str, str]]:
        """torchrun's variables for each rank of one run (none for a single process)."""
        base = self._child_env()
        if gpus is not None:
            base["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        world = self.processes_per_run
        if world == 1:
            return [base]
        port = str(_free_port())
        return [{**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                 "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
                for rank in range(world)]

    def command(self, run_dir: Path) -> list[str]:
        # The harness draws its own progress bars (from metrics.jsonl); keep the log free of them.
        return [self.python, "-m", "scnet.train", "--config", str(RunDir(run_dir).config_file), "--out", str(run_dir),
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
                    code = child.poll()
                    if code is None:
                        continue
                    del active[run_dir]
                    if child.bar is not None:
                        child.bar.close()
                    on_end(self._finish(child, code))
                    overall.update(1)
        finally:
            for child in active.values():  # interrupted: leave nothing running behind a dead harness
                child.stop()
                self._finish(child, child.procs[0].returncode)
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
        log = open(RunDir(run_dir).log_file, "ab")
        gpus = self._free_groups.popleft() if self.gpu_groups else None
        procs: list[subprocess.Popen] = []
        try:
            # Every rank inherits the lock: the run stays locked until the last of them exits.
            for env in self._rank_envs(gpus):
                env = {**env, INHERITED_LOCK_ENV: str(lock.fileno())}  # scnet.train then holds it already
                procs.append(subprocess.Popen(self.command(run_dir), stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, pass_fds=(lock.fileno(),), env=env))
        except OSError as exc:
            _Child(run_dir, procs, lock, log).stop()
            log.close()
            if gpus is not None:
                self._free_groups.append(gpus)
            write_attempt(run_dir, "failed", self.name, error=f"cannot start {self.python}: {exc}")
            lock.release()
            on_end(run_status(run_dir))
            return None
        lock.describe_holder(procs[0].pid)
        extra: dict[str, Any] = {"processes": len(procs)} if len(procs) > 1 else {}
        if gpus is not None:
            extra["gpus"] = ",".join(gpus)
        write_attempt(run_dir, "started", self.name, child_pid=procs[0].pid, **extra)
        return _Child(run_dir, procs, lock, log, gpus)

    def _finish(self, child: _Child, code: int) -> RunStatus:
        child.log.close()
        if child.gpus is not None:
            self._free_groups.append(child.gpus)
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
                   "--processes-per-run", str(self.processes_per_run)]
        if self.gpu_groups:
            command += ["--gpu-groups", ";".join(",".join(group) for group in self.gpu_groups)]
        command += [str(d) for d in run_dirs]
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
    parser.add_argument("--processes-per-run", type=int, default=1)
    parser.add_argument("--gpu-groups", default="", help="GPU groups, e.g. '0,1,2,3;4,5,6,7'")
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    groups = [tuple(group.split(",")) for group in args.gpu_groups.split(";") if group] or None

    def report(status: RunStatus) -> None:
        print(f"{time.strftime('%H:%M:%S')} {status.run_dir.name}: {status.state.value} {status.detail}", flush=True)

    LocalExecutor(jobs=args.jobs, progress=False, processes_per_run=args.processes_per_run,
                  gpu_groups=groups).execute(args.run_dirs, wait=True, on_end=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
