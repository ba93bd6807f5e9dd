"""squeue as the harness calls it: old Slurm (no `--me`) and a failing squeue never make `wait` hang.

A fake `squeue`/`sbatch` pair on PATH plays the cluster; each fake prints what that Slurm would.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from experiments.executors.base import QueueUnavailableError, wait_for_runs
from experiments.executors.queue import current_user, query_queue
from experiments.status import State, run_status, write_attempt

OLD_SQUEUE = """#!/bin/sh
# Slurm before 20.11: no --me
for arg in "$@"; do
  case "$arg" in
    --me) echo "squeue: unrecognized option '--me'" >&2; echo "Try \\"squeue --help\\" for more information" >&2; exit 1;;
  esac
done
echo "$@" > "$(dirname "$0")/args"
echo "41_0|RUNNING|None"
echo "41_1|PENDING|Priority"
"""
REFUSING_SQUEUE = """#!/bin/sh
echo "squeue: invalid option -- 'r'" >&2
exit 1
"""
DOWN_SQUEUE = """#!/bin/sh
echo "slurm_load_jobs error: Unable to contact slurm controller (connect failure)" >&2
exit 1
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def install(squeue: str) -> Path:
        for name, text in (("squeue", squeue), ("sbatch", "#!/bin/sh\nexit 0\n")):
            path = bin_dir / name
            path.write_text(text)
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        return bin_dir

    return install


def _submitted_run(tmp_path: Path, job_id: str) -> Path:
    run_dir = tmp_path / "runs" / "abc123def456"
    run_dir.mkdir(parents=True)
    write_attempt(run_dir, "submitted", "slurm", slurm_job_id=job_id)
    return run_dir


def test_old_slurm_without_me_is_asked_by_user_name(tmp_path, fake_slurm):
    bin_dir = fake_slurm(OLD_SQUEUE)
    entries = query_queue({"41_0", "41_1"})
    assert entries["41_0"].state == "RUNNING" and entries["41_1"].reason == "Priority"
    assert f"--user={current_user()}" in (bin_dir / "args").read_text()
    assert run_status(_submitted_run(tmp_path, "41_1")).state is State.QUEUED


def test_wait_stops_at_once_when_squeue_refuses_the_call(tmp_path, fake_slurm):
    fake_slurm(REFUSING_SQUEUE)
    run_dir = _submitted_run(tmp_path, "41_0")
    assert run_status(run_dir).state is State.RUNNING  # unknown: must not be taken for finished
    with pytest.raises(QueueUnavailableError, match="invalid option") as info:
        wait_for_runs([run_dir], lambda status: None, poll_s=0.01, progress=False, desc="x", queue_grace_s=3600)
    assert "squeue --user=" in str(info.value) and "run the same command again" in str(info.value)


def test_wait_gives_up_after_the_grace_period_when_the_controller_stays_down(tmp_path, fake_slurm):
    fake_slurm(DOWN_SQUEUE)
    run_dir = _submitted_run(tmp_path, "41_0")
    with pytest.raises(QueueUnavailableError, match="Unable to contact slurm controller"):
        wait_for_runs([run_dir], lambda status: None, poll_s=0.01, progress=False, desc="x", queue_grace_s=0.2)
