"""A multi-task SLURM job whose rank 0 cannot take the run's lock ends at once, every task with it.

Rank 0 fails (the run is trained elsewhere) and `srun --kill-on-bad-exit=1` (from the profile's
srun arguments) ends the other task, which would otherwise wait for rank 0 in the process-group
rendezvous until its timeout. Needs the local one-node cluster (slurm/local-cluster.sh).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.executors.slurm_job import TrainingJob
from experiments.profile import profile_from_dict
from scnet.engine.run_lock import RunLock

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "slurm" / "local-cluster.sh"


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    if shutil.which("sbatch") and subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True).returncode == 0:
        return
    reason = "the one-node SLURM cluster is not running (sudo bash slurm/local-cluster.sh start)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def _gone(job_id: str) -> bool:
    out = subprocess.run(["squeue", "--noheader", "--jobs", job_id, "--format=%i"], capture_output=True,
                         text=True).stdout
    return not out.strip()


def _cpu_report() -> dict:
    from experiments.executors.base import cpus_of_this_task, loader_workers

    cpus = cpus_of_this_task()
    return {"cpus": cpus, "workers": loader_workers(cpus) if cpus else None}


def _executor(tmp_path: Path, tasks: int, cpus_per_task: int):
    import submitit

    profile = profile_from_dict({"partition": "debug", "time": 10, "cpus_per_task": cpus_per_task, "mem_gb": 2},
                                "test")
    executor = submitit.SlurmExecutor(folder=tmp_path / "slurm" / "%j", python=sys.executable)
    params = profile.submitit_parameters("scnet-lock-test")
    params["ntasks_per_node"] = tasks  # two CPU tasks: the shape of a 2-GPU job on this GPU-less node
    executor.update_parameters(**params)
    return executor


@pytest.mark.slow
def test_rank_0_without_the_lock_ends_the_whole_job(tmp_path, slurm_cluster):
    from scnet.engine.run_config import RunConfig
    from scnet.records.run_dir import write_config

    run_dir = tmp_path / "runs" / "r"
    write_config(run_dir, RunConfig(preset="mask_rcnn_r18_smoke", data_root=str(tmp_path / "none")).to_dict())
    held = RunLock(run_dir)
    assert held.try_acquire()  # "another process trains this run"
    executor = _executor(tmp_path, tasks=2, cpus_per_task=1)
    job = executor.submit(TrainingJob(run_dir))
    try:
        deadline = time.monotonic() + 90  # far below the rendezvous timeout the other task would wait
        while not _gone(job.job_id):
            assert time.monotonic() < deadline, "the other task was left waiting for rank 0"
            time.sleep(0.5)
    finally:
        subprocess.run(["scancel", job.job_id], capture_output=True)
        held.release()
    errors = "".join(p.read_text() for p in (tmp_path / "slurm" / job.job_id).glob("*_log.err"))
    assert "RunLockedError" in errors and "locked by another process" in errors
    assert f"pid={os.getpid()}" in errors  # who holds it
    assert not (run_dir / "attempt.json").exists()  # the holder's records were left alone


def test_each_task_gets_the_profile_cpus_and_loaders_follow_them(tmp_path, slurm_cluster):
    job = _executor(tmp_path, tasks=1, cpus_per_task=2).submit(_cpu_report)
    try:
        report = job.result()
    finally:
        subprocess.run(["scancel", job.job_id], capture_output=True)
    assert report == {"cpus": 2, "workers": 1}
    script = (tmp_path / "slurm" / job.job_id / f"{job.job_id}_submission.sh").read_text()
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--cpus-per-task=2" in srun and "--kill-on-bad-exit=1" in srun
