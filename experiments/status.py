"""Where each run stands: pending, queued, running, done or failed, read from its run directory.

The state is derived, never stored as truth: `result.json` (valid) means done; a held lock means a
live process is training it; a SLURM job id recorded in `attempt.json` that squeue still lists
means queued or running; an attempt that ended without a result means failed (and the next
invocation retries it, resuming from its last checkpoint). So a harness killed at any moment
leaves nothing that lies about a run.

`attempt.json` is the harness's own record of its latest attempt at a run (executor, SLURM job id,
exit code, error); see docs/interfaces.md.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterable

from experiments.executors.queue import RUNNING_STATES, QueueEntry, QueueError, query_queue
from experiments.progress import describe_progress
from scnet.engine.run_lock import lock_holder
from scnet.records.files import RecordError, read_json, write_json_atomic
from scnet.records.result import read_result
from scnet.records.run_dir import RunDir

# Files a live run keeps changing: the stall rule of `experiments.progress` measures silence on them.
SIGNS_OF_LIFE = (RunDir.METRICS, RunDir.LOG, RunDir.ATTEMPT)


class State(str, Enum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class RunStatus:
    run_dir: Path
    state: State
    detail: str = ""
    log: Path | None = None

    @property
    def in_flight(self) -> bool:
        return self.state in (State.QUEUED, State.RUNNING)


# ---------------------------------------------------------------------------------------- attempts

def write_attempt(run_dir: Path, state: str, executor: str, **fields: Any) -> None:
    """Record the harness's latest attempt at a run ('started', 'submitted', 'failed', 'finished')."""
    record = {"state": state, "executor": executor, "host": socket.gethostname(), "pid": os.getpid(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
    write_json_atomic(RunDir(run_dir).attempt_file, record)


def read_attempt(run_dir: Path) -> dict[str, Any] | None:
    path = RunDir(run_dir).attempt_file
    if not path.exists():
        return None
    try:
        return read_json(path)
    except RecordError:
        return None


# ------------------------------------------------------------------------------------------- logs

def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a text file ('' if absent); reads only the end of big logs."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def slurm_logs(run_dir: Path) -> list[Path]:
    """submitit's stderr files of the run's SLURM jobs, oldest first."""
    folder = RunDir(run_dir).submitit
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*/*_log.err"), key=lambda p: p.stat().st_mtime)


def failure_report(status: RunStatus, lines: int = 20) -> str:
    """The failure's reason and the tail of its log(s), for the user to read without digging."""
    parts = [f"{status.run_dir.name}: {status.detail}"]
    logs = [p for p in [RunDir(status.run_dir).log_file, *slurm_logs(status.run_dir)[-1:]] if p.exists()]
    for log in logs:
        text = tail(log, lines)
        if text:
            parts.append(f"--- last lines of {log} ---\n{text}")
    if not logs:
        parts.append("(no log was written)")
    return "\n".join(parts)


def last_iteration(run_dir: Path) -> int | None:
    """The latest training iteration logged in metrics.jsonl (None before the first log line)."""
    text = tail(RunDir(run_dir).metrics_file, lines=1)
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    for key in ("iter", "iteration", "step"):
        if isinstance(record.get(key), int):
            return record[key]
    return None


# ------------------------------------------------------------------------------------------ state

def _headline(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.1f}"
    return f"mask AP {fmt(metrics['segm']['AP'])}, box AP {fmt(metrics['bbox']['AP'])}"


def _progress(run_dir: Path) -> str:
    return describe_progress(run_dir, signs_of_life=SIGNS_OF_LIFE)


def run_status(run_dir: Path, queue: dict[str, QueueEntry] | None = None,
               queue_error: QueueError | None = None) -> RunStatus:
    """The run's state now; `queue` is a squeue snapshot (None: ask squeue if the run has a job,
    unless `queue_error` says squeue just failed)."""
    run_dir = Path(run_dir)
    log = RunDir(run_dir).log_file
    invalid = ""
    if RunDir(run_dir).result_file.exists():
        try:
            result = read_result(run_dir)
            return RunStatus(run_dir, State.DONE, _headline(result), log)
        except RecordError as exc:
            invalid = f"result.json is invalid and will be rewritten ({exc}); "
    holder = lock_holder(run_dir)
    attempt = read_attempt(run_dir) or {}
    job_id = attempt.get("slurm_job_id")
    # A SLURM job's training process holds the lock too: its job id and state are shown with it.
    if job_id and attempt.get("state") in ("submitted", "started"):
        try:
            if queue is None and queue_error is not None:
                raise queue_error
            entry = (queue if queue is not None else query_queue({job_id})).get(job_id)
        except QueueError as exc:
            progress = f"; {_progress(run_dir)}" if holder else ""
            return RunStatus(run_dir, State.RUNNING, f"SLURM job {job_id}: state unknown ({exc}){progress}", log)
        if entry is not None and entry.alive:
            state = State.RUNNING if entry.state in RUNNING_STATES or holder else State.QUEUED
            reason = f" ({entry.reason})" if entry.reason and entry.reason != "None" else ""
            progress = f"; {_progress(run_dir)}" if state is State.RUNNING else ""
            return RunStatus(run_dir, state, f"SLURM job {job_id} {entry.state.lower()}{reason}{progress}", log)
    if holder:
        return RunStatus(run_dir, State.RUNNING, f"locked by {holder}; {_progress(run_dir)}", log)
    recorded = attempt.get("state")
    if recorded == "queued" and _queue_alive(attempt):
        return RunStatus(run_dir, State.QUEUED,
                         f"in the local queue of pid {attempt.get('queue_pid')} (log {attempt.get('queue_log')})", log)
    if recorded == "finished":
        return RunStatus(run_dir, State.FAILED, invalid + "the trainer returned but left no valid result.json", log)
    if recorded == "failed":
        return RunStatus(run_dir, State.FAILED, invalid + str(attempt.get("error") or "failed"), log)
    if recorded in ("started", "submitted"):
        where = f"SLURM job {job_id}" if job_id else f"{attempt.get('executor', '?')} attempt"
        return RunStatus(run_dir, State.FAILED,
                         invalid + f"{where} ended without a result (killed, cancelled or out of time?)", log)
    resume = ""
    if RunDir(run_dir).last_checkpoint.exists():
        at = last_iteration(run_dir)
        resume = f"resumes from its checkpoint{f' (logged up to iteration {at})' if at else ''}"
    return RunStatus(run_dir, State.PENDING, invalid + resume, log)


def _queue_alive(attempt: dict[str, Any]) -> bool:
    """Is the detached local queue that holds this run still alive (on this host)?"""
    pid = attempt.get("queue_pid")
    if not isinstance(pid, int) or attempt.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_statuses(run_dirs: Iterable[Path], queue_errors: list[QueueError] | None = None) -> list[RunStatus]:
    """Status of many runs with a single squeue call; its failure, if any, is appended to `queue_errors`."""
    run_dirs = list(run_dirs)
    job_ids = set()
    for run_dir in run_dirs:
        attempt = read_attempt(run_dir) or {}
        if attempt.get("slurm_job_id"):
            job_ids.add(attempt["slurm_job_id"])
    queue: dict[str, QueueEntry] | None = {}
    error: QueueError | None = None
    if job_ids:
        try:
            queue = query_queue(job_ids)
        except QueueError as exc:
            queue, error = None, exc  # each run then reports the error itself (without asking again)
            if queue_errors is not None:
                queue_errors.append(exc)
    return [run_status(d, queue, error) for d in run_dirs]
