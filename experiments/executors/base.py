"""The one interface every executor implements, and the training call they share.

An executor receives run directories that already hold `config.json` (the harness writes them) and
trains each one to its `result.json`. It never decides *whether* a run should run (the harness does
that from the runs' status) but it re-checks just before starting one, because another invocation
may have finished or taken it meanwhile. Failures are recorded in the run directory and reported
through `on_end`; they never stop the other runs.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from experiments.locking import RunLock
from experiments.status import RunStatus, State, run_status, run_statuses

# Called when a run handed to the executor ends (done / failed) or turns out to be in flight elsewhere.
OnEnd = Callable[[RunStatus], None]


class Executor(ABC):
    name: str = "executor"
    # False: the executor can only train while the harness waits (inline).
    supports_no_wait: bool = True

    def check(self) -> None:
        """Refuse up front what would fail at submission (raise UsageError)."""

    @abstractmethod
    def execute(self, run_dirs: list[Path], *, wait: bool, on_end: OnEnd) -> None:
        """Train the runs; with wait=False start them (detached or queued) and return at once."""


def claim_run(run_dir: Path, on_end: OnEnd) -> RunLock | None:
    """The run's lock if it still needs training and nobody else holds it; otherwise report its
    status through `on_end` (done, or in flight elsewhere) and return None."""
    status = run_status(run_dir)
    if status.state is State.DONE or status.in_flight:
        on_end(status)
        return None
    lock = RunLock(run_dir)
    if not lock.try_acquire():
        on_end(run_status(run_dir))
        return None
    return lock


def train_in_this_process(run_dir: Path, *, progress: bool) -> dict:
    """Train the run in `run_dir` from its config.json, resuming from its last checkpoint if any."""
    from scnet.engine import RunConfig, run_training
    from scnet.records import read_config

    config = RunConfig.from_dict(read_config(run_dir))
    return run_training(config, Path(run_dir), progress=progress)


def wait_for_runs(run_dirs: list[Path], on_end: OnEnd, *, poll_s: float, progress: bool, desc: str) -> None:
    """Poll the runs' status (one squeue call per round) until none is queued or running."""
    remaining = {Path(d) for d in run_dirs}
    bar = tqdm(total=len(remaining), desc=desc, unit="run", disable=not progress)
    try:
        while remaining:
            for status in run_statuses(sorted(remaining)):
                if not status.in_flight:
                    remaining.discard(status.run_dir)
                    on_end(status)
                    bar.update(1)
            if remaining:
                time.sleep(poll_s)
    finally:
        bar.close()
