"""A smoke table through the real one-node SLURM cluster: job array, preemption, requeue, resume.

`slurm/local-cluster.sh start` (CI runs it before pytest) provides the cluster. Where it cannot be
started (not root) the test is skipped with the reason; under CI (CI=true) that is a failure.

The flow is the user's: submit with --no-wait (one array, two runs at once), preempt the first run
while it trains (USR2, as SLURM sends before a time limit or preemption), then a second invocation
gathers: it waits for both runs and prints Figure 1. Periodic checkpoints are set further apart
than the run is long, so the only checkpoint the resumed job can start from is the one the signal
made: the training loop saves the iteration it reached, then submitit calls
`TrainingJob.checkpoint()` and requeues the job. The preempted run must resume from that
iteration and log every iteration exactly once.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.runspec import build_matrix, parse_overrides
from experiments.status import read_attempt
from scnet.records import read_result

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "slurm" / "local-cluster.sh"
ITERS = 12
TINY = ["--set", f"schedule.max_iters={ITERS}", "--set", "schedule.checkpoint_every=1000", "--set", "schedule.log_every=1",
        "--set", "schedule.warmup_iters=1", "--set", "schedule.batch_size=1", "--set", "image_scale=[128,96]",
        "--set", "eval.enabled=false", "--set", "num_workers=0"]
PROFILE = """
partition = "debug"
time = 30
cpus_per_task = 1
mem_gb = 3
array_parallelism = 2
signal_delay_s = 30
max_requeue = 3
"""


def _cluster_is_up() -> bool:
    return subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """The local cluster, started if needed; skipped only where it cannot start, failed under CI."""
    under_ci = os.environ.get("CI", "").lower() == "true"
    if shutil.which("sbatch") and _cluster_is_up():
        return
    if os.geteuid() != 0:
        reason = "the one-node SLURM cluster is not running and starting it needs root (sudo bash slurm/local-cluster.sh start)"
        if under_ci:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    started = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=600)
    if started.returncode != 0 or not _cluster_is_up():
        pytest.fail(f"slurm/local-cluster.sh start failed:\n{started.stdout}\n{started.stderr}")


def _harness(root: Path, data: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "experiments.run", "figure1", "--profile", str(root / "profile.toml"),
               "--runs-dir", str(root / "runs"), "--out", str(root / "out"), "--data", str(data), "--no-progress",
               *TINY, *extra]
    return subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=timeout)


def _queue_state(job_id: str) -> tuple[str, str]:
    out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i|%T|%r"], capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        parts = line.strip().split("|")
        if parts[0] == job_id:
            return parts[1], parts[2]
    return "GONE", ""


def _iterations(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row["iter"] for row in rows]


def _wait(condition, timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def test_preempted_smoke_run_requeues_and_resumes_from_its_checkpoint(tmp_path, slurm_cluster):
    from scnet.data import ensure_synthetic

    data = ensure_synthetic(tmp_path.parent / "slurm-smoke-shapes", seed=0)
    (tmp_path / "profile.toml").write_text(PROFILE)
    specs = build_matrix(["figure1"], "smoke", data.resolve(), overrides=parse_overrides(TINY[1::2]))
    preempted, other = (spec.run_dir(tmp_path / "runs") for spec in specs)
    job_ids: list[str] = []
    try:
        submitted = _harness(tmp_path, data, "--no-wait", timeout=120)
        assert submitted.returncode == 0, submitted.stderr
        assert "submitted 2 run(s) as SLURM job" in submitted.stderr
        job_ids = [read_attempt(d)["slurm_job_id"] for d in (preempted, other)]
        array_id = job_ids[0].split("_")[0]
        assert job_ids == [f"{array_id}_0", f"{array_id}_1"]  # one array for the table's runs
        # submitit's files live in the run directory.
        assert (preempted / "submitit" / job_ids[0]).is_dir()

        last = preempted / "checkpoints" / "last.pth"
        _wait(lambda: len(_iterations(preempted)) >= 2, 300, "two training iterations", every=0.05)
        assert not last.exists(), "a periodic checkpoint was written before the signal"
        # Preemption: SLURM's warning signal. The loop checkpoints the iteration it reached, then
        # submitit requeues the job (TrainingJob.checkpoint()).
        subprocess.run(["scancel", "--signal=USR2", job_ids[0]], check=True)
        _wait(lambda: _queue_state(job_ids[0])[0] == "PENDING", 120, "the requeued job to be pending")
        # A requeued job waits ~2 minutes before it is eligible again; let it start now.
        subprocess.run(["scontrol", "update", f"jobid={job_ids[0]}", "StartTime=now"], check=True)

        gathered = _harness(tmp_path, data, timeout=600)
        assert gathered.returncode == 0, gathered.stdout + gathered.stderr
        assert "| training w/o SC | 1 |" in gathered.stdout  # Figure 1 rebuilt from both runs
    finally:
        for job_id in job_ids:
            subprocess.run(["scancel", job_id], capture_output=True)

    result = read_result(preempted)
    resumed_from = result["train"]["resumed_from"]
    assert 2 <= resumed_from < ITERS, "the signal came after the run ended"
    log = (preempted / "log.txt").read_text()
    assert "start #2" in log, log  # the requeued job ran the same callable again
    # The checkpoint the job resumed from is the one the signal made, at the iteration reached.
    assert f"stopped at iteration {resumed_from}/{ITERS} (signal SIGUSR2); checkpoint saved" in log, log
    assert f"checkpoint at iteration {resumed_from} saved on signal SIGUSR2; requeueing" in log, log
    assert f"resumed from {last} at iteration {resumed_from}/{ITERS}" in log
    assert log.count(f"training {ITERS} iterations") == 1  # not restarted from scratch
    # Every iteration exactly once: none lost to the preemption, none repeated after the resume.
    assert _iterations(preempted) == list(range(1, ITERS + 1))
    errors = "".join(p.read_text() for p in (preempted / "submitit").glob("*/*_log.err"))
    assert "this job is preempted" in errors
    assert _iterations(other) == list(range(1, ITERS + 1))
    assert read_result(other)["train"]["resumed_from"] == 0


def test_a_job_the_cluster_refuses_is_one_clear_error_before_anything_is_submitted(tmp_path, slurm_cluster):
    (tmp_path / "profile.toml").write_text(PROFILE.replace('partition = "debug"', 'partition = "no-such-queue"'))
    refused = _harness(tmp_path, tmp_path / "shapes", timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    assert "the cluster refuses the job" in refused.stderr
    assert "invalid partition specified: no-such-queue" in refused.stderr  # sbatch's own words
    assert not (tmp_path / "runs").exists() and not (tmp_path / "shapes").exists()
