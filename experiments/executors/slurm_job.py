"""The callable a SLURM job runs: train one run directory, and requeue itself when preempted.

submitit pickles a `TrainingJob` and runs it in every task of the job (one task per GPU); the
trainer sets up torch.distributed from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID. When SLURM
announces the end of the time limit or a preemption (USR2, `signal_delay_s` before), the training
loop is asked to stop (`scnet.engine.preemption`): at the next step every rank joins a checkpoint
of the iteration reached (rank 0 writes it after a barrier), then rank 0 hands over to submitit's
own handler, which calls `checkpoint()` (a fresh `TrainingJob` for the same directory) and
requeues the job. The requeued job resumes from that checkpoint: no iteration is lost or repeated.
A signal outside training (data set-up, evaluation) goes straight to submitit's handler: the last
checkpoint is then all the state there is.

SIGTERM (a preemption without `send_user_signal`, a `scancel`, the time limit itself) stops the loop
the same way, within SLURM's KillWait: the iteration reached is saved. Then the job requeues itself
only if SLURM selected it for preemption (`PreemptTime` in `scontrol show job`); after a `scancel`
(which requeueing would undo) or the time limit it just ends, and the next `experiments.run` call
resubmits the run, which resumes from that checkpoint. Outside training SIGTERM goes to submitit's
handler, which only logs it.

A job that was given GPUs (SLURM_JOB_GPUS and friends) and finds CUDA unusable stops at once with
the driver and CUDA versions (`scnet.engine.device`), instead of training on the CPU.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from experiments.status import write_attempt
from scnet.engine.run_lock import RunLock, RunLockedError, lock_holder
from scnet.records.run_dir import RunDir


def _job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID", "?")


def _preempted(job_id: str) -> bool:
    """Whether SLURM has selected the job for preemption: `scontrol show job` then gives a
    `PreemptTime`. A SIGTERM without it is a `scancel` or the time limit."""
    try:
        shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                               timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    match = re.search(r"\bPreemptTime=(\S+)", shown)
    return match is not None and match.group(1) not in ("None", "Unknown", "N/A")


def _is_done(run_dir: Path) -> bool:
    from scnet.records.files import RecordError
    from scnet.records.result import read_result

    try:
        read_result(run_dir)
        return True
    except RecordError:
        return False


class TrainingJob:
    """Picklable: holds only the run directory (the config is read from it in the job)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = str(run_dir)

    def __repr__(self) -> str:
        return f"TrainingJob({self.run_dir!r})"

    def __call__(self) -> str:
        from experiments.executors.base import train_in_this_process

        run_dir = Path(self.run_dir)
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if _is_done(run_dir):
            return f"{run_dir}: already done"
        lock = RunLock(run_dir)
        if rank == 0:
            if not lock.try_acquire():
                # Another job or process trains this run; leave its records alone. With other tasks
                # in this job, fail: srun --kill-on-bad-exit=1 (the profile's srun_args) then ends
                # them at once, instead of leaving them waiting for rank 0 in the rendezvous.
                if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
                    raise RunLockedError(run_dir, lock_holder(run_dir))
                return f"{run_dir}: already being trained ({lock_holder(run_dir)}); nothing to do"
            write_attempt(run_dir, "started", "slurm", slurm_job_id=_job_id(), restarts=restarts)
            with open(RunDir(run_dir).log_file, "a", encoding="utf-8") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [harness] SLURM job {_job_id()} on "
                          f"{os.uname().nodename}, start #{restarts + 1}\n")
        from scnet.engine import preemption

        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue handler
        logs_term = signal.getsignal(signal.SIGTERM)  # submitit's: logs it ("Bypassing signal SIGTERM")
        restores = [preemption.install_stop_signal(signal.SIGUSR2, on_idle=requeue if callable(requeue) else None),
                    preemption.install_stop_signal(signal.SIGTERM, on_idle=logs_term if callable(logs_term) else None)]

        def restore() -> None:
            for undo in restores:
                undo()

        try:
            train_in_this_process(run_dir, progress=False)
        except preemption.TrainingInterrupted as stopped:
            terminated = signal.SIGTERM in preemption.signals_received()
            requeueing = not terminated or (rank == 0 and _preempted(_job_id()))
            if rank == 0:
                then = "requeueing" if requeueing else ("not requeueing: cancelled or out of time, not preempted "
                                                        "(the next experiments.run call resubmits it, resuming)")
                with open(RunDir(run_dir).log_file, "a", encoding="utf-8") as log:
                    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [harness] SLURM job {_job_id()}: "
                              f"checkpoint at iteration {stopped.iteration} saved on {stopped.reason}; {then}\n")
                restore()
                lock.release()
                if callable(requeue) and requeueing:
                    requeue(signal.SIGUSR2, None)  # submitit: checkpoint() + scontrol requeue + exit
            # The other ranks end here; the requeue restarts every task.
            return f"{run_dir}: stopped at iteration {stopped.iteration}"
        except Exception as exc:
            if rank == 0:
                write_attempt(run_dir, "failed", "slurm", slurm_job_id=_job_id(),
                              error=f"{type(exc).__name__}: {exc}")
            raise
        # SystemExit (submitit's requeue on preemption) passes through untouched: the job comes back.
        finally:
            restore()
            lock.release()
        if rank == 0:
            write_attempt(run_dir, "finished", "slurm", slurm_job_id=_job_id())
        return f"{run_dir}: done"

    def checkpoint(self, *args: object, **kwargs: object):
        """Called by submitit on timeout/preemption: the state is on disk, so requeue the same run."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainingJob(self.run_dir))
