"""SLURM executor: a table's runs as one job array through submitit, logs inside each run directory.

submitit writes an array's files under one folder pattern, which cannot name a different run
directory per task. So the array is submitted held (`--hold`), each task's submitit folder is moved
into its run directory (RUN_DIR/submitit/JOBID_TASK/) and replaced by a symlink at the pattern's
place (RUNS_DIR/.slurm/JOBID_TASK), and only then is the array released. SLURM, submitit in the
job, and a requeued job all resolve the same path, so every log, pickle and result of a run lives
in its own directory.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from experiments.executors.base import Executor, OnEnd, claim_run, wait_for_runs
from experiments.executors.queue import slurm_available
from experiments.executors.slurm_job import TrainingJob
from experiments.profile import SlurmProfile
from experiments.runspec import UsageError
from experiments.status import write_attempt
from scnet.engine.run_lock import RunLock
from scnet.records.run_dir import RunDir

POLL_S = 5.0
SLURM_LINK_DIR = ".slurm"


class SubmissionError(UsageError):
    """The cluster refused the job; the message carries sbatch's own words."""


class SlurmExecutor(Executor):
    name = "slurm"

    def __init__(self, profile: SlurmProfile, runs_dir: Path, job_name: str = "scnet",
                 progress: bool = True, poll_s: float = POLL_S) -> None:
        self.profile = profile
        self.runs_dir = Path(runs_dir).resolve()
        self.job_name = job_name
        self.progress = progress
        self.poll_s = poll_s
        self.job_ids: dict[Path, str] = {}

    # --------------------------------------------------------------------------------- up front
    def check(self, runs: int = 1) -> None:
        """Ask the cluster whether it would take the job (`sbatch --test-only`), submitting nothing.

        The script tested is the one `submit` will hand to sbatch for `runs` runs, word for word
        (array, signal, hold, submitit's wckey and output paths included): a cluster that refuses
        one of those options refuses it here, not after the data is prepared."""
        if not slurm_available():
            raise UsageError("--executor slurm: sbatch/squeue not found on this machine; run from a SLURM "
                             "login node (or start the test cluster: sudo bash slurm/local-cluster.sh start)")
        if runs < 1:
            return
        text = self.batch_script(runs)
        with tempfile.TemporaryDirectory(prefix="scnet-sbatch-") as folder:
            script = Path(folder) / "job.sh"
            script.write_text(text)
            try:
                done = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True,
                                      timeout=60)
            except subprocess.TimeoutExpired:
                raise SubmissionError("sbatch --test-only did not answer within 60 s; is slurmctld up?") from None
        if done.returncode != 0:
            words = (done.stderr or done.stdout).strip()
            options = " ".join(line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH"))
            raise SubmissionError(f"the cluster refuses the job (profile {self.profile.source}):\n{words}\n"
                                  f"(checked with: sbatch --test-only {options})")

    def _submitit_executor(self):
        """The submitit executor `submit` uses: the profile's request, held until the logs are moved."""
        import submitit

        executor = submitit.SlurmExecutor(folder=self.runs_dir / SLURM_LINK_DIR / "%j",
                                          max_num_timeout=self.profile.max_requeue, python=self.profile.python)
        params = self.profile.submitit_parameters(self.job_name)
        params["additional_parameters"] = {**params.get("additional_parameters", {}), "hold": True}
        executor.update_parameters(**params)
        return executor

    def batch_script(self, runs: int) -> str:
        """The sbatch script submitit writes for `runs` runs (a job array when more than one), as
        submitit's own array submission builds it."""
        executor = self._submitit_executor()
        if runs > 1:
            executor.parameters["map_count"] = runs
        return executor._make_submission_file_text(executor._submitit_command_str, "test-only")

    # ------------------------------------------------------------------------------------- submit
    def execute(self, run_dirs: list[Path], *, wait: bool, on_end: OnEnd) -> None:
        run_dirs = [Path(d).resolve() for d in run_dirs]
        if run_dirs:
            self.submit(run_dirs, on_end)
        if wait:
            wait_for_runs(list(self.job_ids), on_end, poll_s=self.poll_s, progress=self.progress,
                          desc="SLURM runs")

    def submit(self, run_dirs: list[Path], on_end: OnEnd) -> dict[Path, str]:
        """Submit the runs as one array (one job if a single run); returns run dir -> SLURM job id."""
        locks: list[RunLock] = []
        chosen: list[Path] = []
        # Hold the runs' locks while submitting, so a concurrent invocation sees them as taken.
        for run_dir in run_dirs:
            lock = claim_run(run_dir, on_end)
            if lock is None:
                continue
            locks.append(lock)
            chosen.append(run_dir)
        if not chosen:
            return {}
        link_dir = self.runs_dir / SLURM_LINK_DIR
        link_dir.mkdir(parents=True, exist_ok=True)
        executor = self._submitit_executor()
        array_id = None
        try:
            try:
                with executor.batch():
                    jobs = [executor.submit(TrainingJob(run_dir)) for run_dir in chosen]
            except Exception as exc:  # submitit wraps sbatch's refusal; show sbatch's words
                raise SubmissionError(f"sbatch refused the job (profile {self.profile.source}): {exc}") from None
            array_id = jobs[0].job_id.split("_")[0]
            for run_dir, job in zip(chosen, jobs):
                self._move_into_run_dir(link_dir, job.job_id, run_dir)
                write_attempt(run_dir, "submitted", self.name, slurm_job_id=job.job_id,
                              profile=self.profile.source)
                self.job_ids[run_dir] = job.job_id
        except BaseException:
            if array_id is not None:
                subprocess.run(["scancel", array_id], capture_output=True)
            raise
        finally:
            for lock in locks:
                lock.release()
        released = subprocess.run(["scontrol", "release", array_id], capture_output=True, text=True)
        if released.returncode != 0:
            raise SubmissionError(f"submitted job {array_id} but could not release it: {released.stderr.strip()}; "
                                  f"release it by hand: scontrol release {array_id}")
        print(f"submitted {len(chosen)} run(s) as SLURM job {array_id}", file=sys.stderr)
        return dict(self.job_ids)

    @staticmethod
    def _move_into_run_dir(link_dir: Path, job_id: str, run_dir: Path) -> None:
        source = link_dir / job_id
        target = RunDir(run_dir).submitit / job_id
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target))
        os.symlink(os.path.relpath(target, link_dir), source)
