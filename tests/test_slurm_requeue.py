"""A smoke table through the real one-node SLURM cluster: job array, preemption, requeue, resume.

`slurm/local-cluster.sh start` (CI runs it before pytest) provides the cluster. Where it cannot be
started (not root) the test is skipped with the reason; under CI (CI=true) that is a failure.

The flow is the user's: submit with --no-wait (one array, two runs at once), then signal both runs
while they train, as SLURM does: the first gets USR2 (the warning before a time limit, or a
preemption with send_user_signal), the second SIGTERM (as a scancel sends it). Periodic checkpoints
are set further apart than the run is long, so the only checkpoint a resumed job can start from is
the one the signal made. On USR2 the training loop saves the iteration it reached, then submitit
calls `TrainingJob.checkpoint()` and requeues the job; on a SIGTERM that is not a preemption (SLURM
set no PreemptTime) it saves and ends without requeueing itself, and the test requeues it. The first run
gets USR2 again during its evaluation: submitit requeues it once (its data-loader workers, which
SLURM signals too, ignore it). A second invocation gathers: it waits for both runs and prints
Figure 1. Both runs must resume from the iteration they reached and log every iteration once.
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
from scnet.records.result import read_result

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "slurm" / "local-cluster.sh"
ITERS = 12
TINY = ["--set", f"schedule.max_iters={ITERS}", "--set", "schedule.checkpoint_every=1000", "--set", "schedule.log_every=1",
        "--set", "schedule.warmup_iters=1", "--set", "schedule.batch_size=1", "--set", "image_scale=[128,96]",
        "--set", "eval.max_images=24", "--set", "num_workers=2"]  # workers: SLURM signals them too
# No cpus_per_task: the jobs then keep the config's two loader workers (with it they would get
# cpus_per_task - 1), and two of them fit the 2-core test node at once.
PROFILE = """
partition = "debug"
time = 30
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


def _harness_command(root: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "experiments.run", "figure1", "--profile", str(root / "profile.toml"),
            "--runs-dir", str(root / "runs"), "--out", str(root / "out"), "--data", str(data), "--no-progress",
            *TINY, *extra]


def _harness_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _harness(root: Path, data: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(_harness_command(root, data, *extra), cwd=REPO, env=_harness_env(), capture_output=True,
                          text=True, timeout=timeout)


def _queue_state(job_id: str) -> tuple[str, str]:
    out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i|%T|%r"], capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        parts = line.strip().split("|")
        if parts[0] == job_id:
            return parts[1], parts[2]
    return "GONE", ""


def _release(job_id: str) -> None:
    """A requeued job waits ~2 minutes before it is eligible again; let it start now."""
    _wait(lambda: _queue_state(job_id)[0] == "PENDING", 120, f"job {job_id} to be pending")
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)


def _starts(log: str) -> int:
    """How many times a SLURM job started the run (the harness logs each start)."""
    return sum(1 for line in log.splitlines() if "[harness] SLURM job" in line and ", start #" in line)


def _requeue_until_started(job_id: str, run_dir: Path, tries: int = 3) -> None:
    """Requeue an ended job and let it start now, until its second start is logged.

    slurmd remembers a job it was told to signal for a moment after the job ends: a requeued copy
    that the scheduler allocates within that moment exits at once ("Job N already killed, do not
    launch batch job" in slurmd.log) without running anything (SLURM still counts it as a restart, so
    the start that follows may be logged as #3). A user's next experiments.run call resubmits such a
    run; this test wants the requeued job itself, so it asks again."""
    for _ in range(tries):
        subprocess.run(["scontrol", "requeue", job_id], check=True)
        _release(job_id)
        _wait(lambda: _starts(_log(run_dir)) >= 2 or _queue_state(job_id)[0] == "GONE", 120,
              f"job {job_id} to start again or to end")
        if _starts(_log(run_dir)) >= 2:
            return
        time.sleep(2)
    raise AssertionError(f"the requeued job {job_id} never started ({tries} requeues); see slurmd.log")


def _job_processes(job_id: str) -> set[int]:
    """Python processes of an array task on this (the only) node: the job's own and its loader workers."""
    array_id, task = job_id.split("_")
    pids = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"submitit.core._submit" in command and f"SLURM_ARRAY_JOB_ID={array_id}".encode() in environ
                and f"SLURM_ARRAY_TASK_ID={task}".encode() in environ):
            pids.add(int(proc.name))
    return pids


def _log(run_dir: Path) -> str:
    path = run_dir / "log.txt"
    return path.read_text() if path.exists() else ""


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


@pytest.mark.slow
def test_preempted_smoke_runs_resume_from_the_checkpoint_their_signal_made(tmp_path, slurm_cluster):
    from scnet.data import ensure_synthetic

    data = ensure_synthetic(tmp_path.parent / "slurm-smoke-shapes", seed=0)
    (tmp_path / "profile.toml").write_text(PROFILE)
    specs = build_matrix(["figure1"], "smoke", data.resolve(), overrides=parse_overrides(TINY[1::2]))
    warned, terminated = (spec.run_dir(tmp_path / "runs") for spec in specs)
    job_ids: list[str] = []
    gather = None
    try:
        submitted = _harness(tmp_path, data, "--no-wait", timeout=120)
        assert submitted.returncode == 0, submitted.stderr
        assert "submitted 2 run(s) as SLURM job" in submitted.stderr
        job_ids = [read_attempt(d)["slurm_job_id"] for d in (warned, terminated)]
        array_id = job_ids[0].split("_")[0]
        assert job_ids == [f"{array_id}_0", f"{array_id}_1"]  # one array for the table's runs
        # submitit's files live in the run directory.
        assert (warned / "submitit" / job_ids[0]).is_dir()

        # Each run is signalled once it has trained two iterations (the two may not run at once when
        # other jobs hold the node's cores).
        for run_dir, job_id, name in ((warned, job_ids[0], "USR2"), (terminated, job_ids[1], "TERM")):
            _wait(lambda: len(_iterations(run_dir)) >= 2, 600, "two training iterations", every=0.05)
            assert not (run_dir / "checkpoints" / "last.pth").exists(), "a periodic checkpoint came first"
            subprocess.run(["scancel", f"--signal={name}", job_id], check=True)
        # SIGTERM without a preemption (as from scancel): the checkpoint is saved and the job ends;
        # the test requeues it, as a later experiments.run call (or SLURM's PreemptMode=REQUEUE) would.
        _wait(lambda: _queue_state(job_ids[1])[0] == "GONE", 120, "the terminated job to end")
        assert "on signal SIGTERM; not requeueing: cancelled or out of time" in _log(terminated), _log(terminated)
        _requeue_until_started(job_ids[1], terminated)
        _release(job_ids[0])  # submitit requeued it

        gather = subprocess.Popen(_harness_command(tmp_path, data), cwd=REPO, env=_harness_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # USR2 during the first run's evaluation, while its loader workers run: submitit requeues the
        # job, once. The training's workers are told from the evaluation's by their process ids.
        seen: set[int] = set()

        def training_done() -> bool:  # the processes seen before it are the job's own and its training's
            if "training done" in _log(warned):
                return True
            seen.update(_job_processes(job_ids[0]))
            return False

        _wait(training_done, 300, "the resumed run to finish training", every=0.05)
        _wait(lambda: len(_job_processes(job_ids[0]) - seen) >= 2, 120, "the evaluation's two loader workers",
              every=0.05)
        assert not (warned / "result.json").exists(), "evaluation ended before the signal"
        subprocess.run(["scancel", "--signal=USR2", job_ids[0]], check=True)
        _release(job_ids[0])
        out, _ = gather.communicate(timeout=600)
        assert gather.returncode == 0, out
        assert "| training w/o SC | 1 |" in out  # Figure 1 rebuilt from both runs
    finally:
        if gather is not None and gather.poll() is None:
            gather.kill()
        for job_id in job_ids:
            subprocess.run(["scancel", job_id], capture_output=True)

    last = {run_dir: run_dir / "checkpoints" / "last.pth" for run_dir in (warned, terminated)}
    for run_dir, name in ((warned, "SIGUSR2"), (terminated, "SIGTERM")):
        result = read_result(run_dir)
        resumed_from = result["train"]["resumed_from"] if run_dir is terminated else _first_resume(run_dir)
        assert 2 <= resumed_from < ITERS, "the signal came after the training ended"
        log = _log(run_dir)
        assert _starts(log) >= 2, log  # the requeued job ran the same callable again
        # The checkpoint the job resumed from is the one the signal made, at the iteration reached.
        assert f"stopped at iteration {resumed_from}/{ITERS} (signal {name}); checkpoint saved" in log, log
        assert f"checkpoint at iteration {resumed_from} saved on signal {name}" in log, log
        assert f"resumed from {last[run_dir]} at iteration {resumed_from}/{ITERS}" in log
        assert log.count(f"training {ITERS} iterations") == 1  # not restarted from scratch
        # Every iteration exactly once: none lost to the signal, none repeated after the resume.
        assert _iterations(run_dir) == list(range(1, ITERS + 1))
        assert result["eval"]["num_images"] == 24
    errors = "".join(p.read_text() for p in (warned / "submitit").glob("*/*_log.err"))
    # Two USR2s, each caught once by the job's own process: the loader workers ignored them.
    assert errors.count("Caught signal SIGUSR2") == 2, errors[-3000:]
    assert "this job is preempted" in errors
    assert _starts(_log(warned)) >= 3  # requeued again from its evaluation
    assert "training already complete; evaluating" in _log(warned)


def _first_resume(run_dir: Path) -> int:
    """The iteration the first resume started from (a later requeue during evaluation resumes at the end)."""
    for line in _log(run_dir).splitlines():
        if "resumed from" in line and f"at iteration {ITERS}/" not in line:
            return int(line.split("at iteration ")[1].split("/")[0])
    raise AssertionError(f"no resume in the log of {run_dir}")


@pytest.mark.slow
def test_a_job_the_cluster_refuses_is_one_clear_error_before_anything_is_submitted(tmp_path, slurm_cluster):
    (tmp_path / "profile.toml").write_text(PROFILE.replace('partition = "debug"', 'partition = "no-such-queue"'))
    refused = _harness(tmp_path, tmp_path / "shapes", timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    assert "the cluster refuses the job" in refused.stderr
    assert "invalid partition specified: no-such-queue" in refused.stderr  # sbatch's own words
    assert not (tmp_path / "runs").exists() and not (tmp_path / "shapes").exists()
