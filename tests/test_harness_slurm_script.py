"""`sbatch --test-only` checks the very script the submission hands to sbatch (issue 19, item 6), and
a SLURM job tells a preemption from a scancel by `scontrol show job` (item 5).

No cluster: `sbatch`, `squeue` and `scontrol` on PATH are stand-ins that keep each script they are
given and answer as SLURM does. The script the check tested and the one submitted must be the same
text, array, signal, hold and submitit's wckey included.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from experiments.executors.slurm import SlurmExecutor, SubmissionError
from experiments.profile import profile_from_dict

FAKE_SBATCH = """#!/bin/sh
if [ "$1" = "--test-only" ]; then
  cp "$2" "$RECORD/test-only.sh"
  grep -q -- "--partition=no-such-queue" "$2" && { echo "sbatch: error: invalid partition specified: no-such-queue" >&2; exit 1; }
  echo "sbatch: Job 4242 to start at 2030-01-01T00:00:00 using 1 processors on nodes vm in partition debug" >&2
  exit 0
fi
cp "$1" "$RECORD/submitted.sh"
echo "Submitted batch job 4242"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", "#!/bin/sh\nexit 0\n"), ("scontrol", "#!/bin/sh\nexit 0\n"),
                       ("scancel", "#!/bin/sh\nexit 0\n")):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("RECORD", str(record))
    return record


def _executor(tmp_path: Path, **profile) -> SlurmExecutor:
    raw = {"partition": "debug", "time": 30, "cpus_per_task": 2, "mem_gb": 3, "array_parallelism": 2,
           "signal_delay_s": 90, **profile}
    return SlurmExecutor(profile_from_dict(raw, "test.toml"), tmp_path / "runs", job_name="scnet-table5",
                         progress=False)


def test_the_test_only_script_is_the_submitted_one(tmp_path, fake_slurm):
    executor = _executor(tmp_path)
    run_dirs = [tmp_path / "runs" / name for name in ("a", "b", "c")]
    for run_dir in run_dirs:
        run_dir.mkdir(parents=True)
    executor.check(runs=len(run_dirs))
    executor.submit(run_dirs, on_end=lambda status: None)
    tested = (fake_slurm / "test-only.sh").read_text()
    submitted = (fake_slurm / "submitted.sh").read_text()
    assert tested == submitted
    for option in ("--array=0-2%2", "--signal=USR2@90", "--hold", "--wckey=submitit", "--partition=debug",
                   "--cpus-per-task=2", "--job-name=scnet-table5"):
        assert f"#SBATCH {option}\n" in tested, option


def test_one_run_is_checked_as_a_single_job(tmp_path, fake_slurm):
    executor = _executor(tmp_path)
    run_dir = tmp_path / "runs" / "only"
    run_dir.mkdir(parents=True)
    executor.check(runs=1)
    executor.submit([run_dir], on_end=lambda status: None)
    tested = (fake_slurm / "test-only.sh").read_text()
    assert tested == (fake_slurm / "submitted.sh").read_text()
    assert "--array" not in tested


def test_a_refused_request_shows_sbatch_words_and_the_options_tested(tmp_path, fake_slurm):
    with pytest.raises(SubmissionError) as caught:
        _executor(tmp_path, partition="no-such-queue").check(runs=2)
    message = str(caught.value)
    assert "invalid partition specified: no-such-queue" in message
    assert "--array=0-1%2" in message and "--signal=USR2@90" in message
    assert not (tmp_path / "runs").exists()  # nothing written before the cluster said yes


@pytest.mark.parametrize("preempt_time, preempted", [("2030-01-01T00:00:00", True), ("None", False), ("", False)])
def test_a_job_knows_whether_slurm_preempted_it(tmp_path, fake_slurm, preempt_time, preempted):
    from experiments.executors.slurm_job import _preempted

    field = f" PreemptEligibleTime=2029-12-31T00:00:00 PreemptTime={preempt_time}" if preempt_time else ""
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "JobId=77 JobName=scnet JobState=RUNNING Reason=None{field} Partition=debug"\n')
    assert _preempted("77_0") is preempted
