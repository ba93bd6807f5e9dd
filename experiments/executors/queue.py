"""What SLURM says about jobs: one `squeue` call for all runs, so status stays fast on many runs."""
from __future__ import annotations

import getpass
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass

# SLURM job states in which the job will (again) run or is running.
WAITING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                  "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT"}


@dataclass(frozen=True)
class QueueEntry:
    job_id: str  # "123" or "123_4" (array task)
    state: str  # SLURM's long state name: PENDING, RUNNING, COMPLETED, ...
    reason: str

    @property
    def alive(self) -> bool:
        return self.state in WAITING_STATES or self.state in RUNNING_STATES


def slurm_available() -> bool:
    return shutil.which("squeue") is not None and shutil.which("sbatch") is not None


class QueueError(RuntimeError):
    """squeue did not answer; the caller must not conclude that a job has ended.

    `permanent`: squeue answered that it will never work as called (an option this Slurm lacks, an
    unknown user), so waiting for it again is pointless.
    """

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


# squeue's words for a call that can never succeed (as opposed to a controller that is busy or down).
_PERMANENT_ERRORS = ("unrecognized option", "invalid option", "unknown option", "invalid user", "usage:")


def current_user() -> str:
    """The login name squeue filters on (`--me` needs Slurm 20.11; `--user` works everywhere)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return getpass.getuser()


def query_queue(job_ids: set[str] | None = None, timeout_s: float = 30.0) -> dict[str, QueueEntry]:
    """squeue's view of the given jobs (all of the user's jobs if None); {} on a machine without SLURM.

    Array tasks are listed one per line (`-r`), as "ARRAYID_INDEX", which is how submitit names them.
    A job missing from the answer has left the queue (finished, failed or cancelled a while ago).
    """
    if not slurm_available():
        return {}
    command = ["squeue", "--noheader", "--array", f"--user={current_user()}", "--format=%i|%T|%r"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=True).stdout
    except subprocess.CalledProcessError as exc:
        words = (exc.stderr or "").strip() or str(exc)
        permanent = any(marker in words.lower() for marker in _PERMANENT_ERRORS)
        raise QueueError(f"{' '.join(command)} failed: {words}", permanent=permanent) from None
    except (subprocess.TimeoutExpired, OSError) as exc:
        raise QueueError(f"{' '.join(command)} failed: {exc}") from None
    entries: dict[str, QueueEntry] = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3:
            continue
        entry = QueueEntry(*parts)
        if job_ids is None or entry.job_id in job_ids:
            entries[entry.job_id] = entry
    return entries
