"""The one interface every executor implements, and the training call they share.

An executor receives run directories that already hold `config.json` (the harness writes them) and
trains each one to its `result.json`. It never decides *whether* a run should run (the harness does
that from the runs' status) but it re-checks just before starting one, because another invocation
may have finished or taken it meanwhile. Failures are recorded in the run directory and reported
through `on_end`; they never stop the other runs.
"""
from __future__ import annotations

import os
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from experiments.executors.queue import QueueError, current_user
from experiments.runspec import UsageError
from experiments.status import RunStatus, State, run_status, run_statuses
from scnet.engine.run_lock import RunLock

# How long squeue may keep failing (controller down, timeouts) before waiting gives up.
QUEUE_GRACE_S = 600.0

# Called when a run handed to the executor ends (done / failed) or turns out to be in flight elsewhere.
OnEnd = Callable[[RunStatus], None]


class Executor(ABC):
    name: str = "executor"
    # False: the executor can only train while the harness waits (inline).
    supports_no_wait: bool = True

    def check(self, runs: int = 1) -> None:
        """Refuse up front what would fail when `runs` runs are submitted (raise UsageError)."""

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


def loader_workers(cpus_per_task: int) -> int:
    """Data-loading processes for a task with this many cores: all but the one that trains."""
    return max(0, cpus_per_task - 1)


def cpus_of_this_task(env: dict[str, str] | None = None) -> int | None:
    """The cores SLURM gave this task (SLURM_CPUS_PER_TASK), None outside a job that set them."""
    raw = (os.environ if env is None else env).get("SLURM_CPUS_PER_TASK", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def train_in_this_process(run_dir: Path, *, progress: bool) -> dict:
    """Train the run in `run_dir` from its config.json, resuming from its last checkpoint if any.

    In a SLURM task the data loaders follow the task's cores (`cpus_per_task` of the profile), not
    the config's default: `num_workers` changes speed only, never the run's identity or numbers.
    """
    from scnet.engine import run_training
    from scnet.records.run_dir import RunDir

    config = RunDir(run_dir).read_run_config()
    cpus = cpus_of_this_task()
    if cpus is not None and loader_workers(cpus) != config.num_workers:
        print(f"[harness] {cpus} CPUs per task: {loader_workers(cpus)} data-loading workers "
              f"(config.json says {config.num_workers})", file=sys.stderr, flush=True)
        config = config.replace(num_workers=loader_workers(cpus))
    return run_training(config, Path(run_dir), progress=progress)


class QueueUnavailableError(UsageError):
    """squeue cannot say whether the runs are still in the queue, so waiting would never end."""


def wait_for_runs(run_dirs: list[Path], on_end: OnEnd, *, poll_s: float, progress: bool, desc: str,
                  queue_grace_s: float | None = None) -> None:
    """Poll the runs' status (one squeue call per round) until none is queued or running.

    A run whose job squeue cannot report counts as in flight, so a squeue that never answers would
    make this loop forever: it stops at once when squeue refuses the call itself (an old Slurm, a
    wrong option), and after `queue_grace_s` of failures otherwise.
    """
    grace_s = QUEUE_GRACE_S if queue_grace_s is None else queue_grace_s
    remaining = {Path(d) for d in run_dirs}
    failing_since: float | None = None
    bar = tqdm(total=len(remaining), desc=desc, unit="run", disable=not progress)
    try:
        while remaining:
            errors: list[QueueError] = []
            statuses = run_statuses(sorted(remaining), queue_errors=errors)
            if errors:
                failing_since = failing_since if failing_since is not None else time.monotonic()
                if errors[0].permanent or time.monotonic() - failing_since >= grace_s:
                    how_long = "" if errors[0].permanent else f" for {time.monotonic() - failing_since:.0f} s"
                    raise QueueUnavailableError(
                        f"stopped waiting: squeue has failed{how_long}, so whether {len(remaining)} run(s) are "
                        f"still queued or running is unknown ({errors[0]}). The jobs themselves are not "
                        f"affected: follow them with `squeue --user={current_user()}` or --status, and run the "
                        "same command again to gather the table")
            else:
                failing_since = None
            for status in statuses:
                if not status.in_flight:
                    remaining.discard(status.run_dir)
                    on_end(status)
                    bar.update(1)
            if remaining:
                time.sleep(poll_s)
    finally:
        bar.close()
