"""The harness training real (tiny) smoke runs with the default local-subprocess executor.

Each run here is two iterations of a smoke network on small images with evaluation off: enough for
the real `python -m scnet.train` to write checkpoints, logs and result.json, and fast on a CPU.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.runspec import build_matrix, parse_overrides
from scnet.engine.run_lock import lock_holder
from scnet.records.result import read_result

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "schedule.max_iters=2", "--set", "schedule.checkpoint_every=1", "--set", "schedule.log_every=1",
        "--set", "schedule.warmup_iters=1", "--set", "schedule.batch_size=1", "--set", "image_scale=[128,96]",
        "--set", "eval.enabled=false", "--set", "num_workers=0"]
TRAINING_STARTS = "training 2 iterations"


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory) -> Path:
    from scnet.data import ensure_synthetic

    return ensure_synthetic(tmp_path_factory.getbasetemp() / "smoke-shapes", seed=0)


def _args(table: str, root: Path, data: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.run", table, "--runs-dir", str(root / "runs"),
            "--out", str(root / "out"), "--data", str(data), *TINY]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _run_dirs(table: str, root: Path, data: Path) -> list[Path]:
    overrides = parse_overrides(TINY[1::2])
    return [spec.run_dir(root / "runs") for spec in build_matrix([table], "smoke", data.resolve(), overrides=overrides)]


@pytest.mark.slow
def test_two_invocations_at_once_train_each_run_once(tmp_path, smoke_data):
    run_dirs = _run_dirs("figure1", tmp_path, smoke_data)
    first = subprocess.Popen(_args("figure1", tmp_path, smoke_data), cwd=REPO, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(lock_holder(d) for d in run_dirs):  # the first invocation is training its first run
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    second = subprocess.Popen(_args("figure1", tmp_path, smoke_data), cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out1, err1 = first.communicate(timeout=900)
    out2, err2 = second.communicate(timeout=900)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    # The run the first one held was reported by the second as running, not started again.
    assert "[running]" in err2 and "locked by pid=" in err2
    for run_dir in run_dirs:
        read_result(run_dir)
        assert (run_dir / "log.txt").read_text().count(TRAINING_STARTS) == 1, run_dir
    # Both printed the finished figure.
    assert "training w/o SC | 1 |" in out1 and "training w/o SC | 1 |" in out2


@pytest.mark.slow
def test_failed_run_is_reported_with_its_log_and_others_finish_then_finished_runs_are_skipped(tmp_path, smoke_data):
    broken, healthy = _run_dirs("figure1", tmp_path, smoke_data)
    (broken / "checkpoints").mkdir(parents=True)
    (broken / "checkpoints" / "last.pth").write_bytes(b"not a checkpoint")

    done = subprocess.run(_args("figure1", tmp_path, smoke_data), cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 1, done.stderr
    assert f"[failed] {broken.name}" in done.stderr
    assert f"last lines of {broken / 'log.txt'}" in done.stderr
    assert "not a readable checkpoint" in done.stderr  # the cause, from the log's tail
    assert "1 of 2 run(s) did not finish (1 failed)" in done.stderr
    read_result(healthy)  # the failure did not stop the other run

    status = subprocess.run([*_args("figure1", tmp_path, smoke_data), "--status"], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert f"{broken.name}  failed" in status.stdout and f"log: {broken / 'log.txt'}" in status.stdout
    assert f"{healthy.name}  done" in status.stdout

    # Again: the finished run is skipped (not retrained, result untouched); the failed one is retried.
    result_mtime = (healthy / "result.json").stat().st_mtime_ns
    again = subprocess.run(_args("figure1", tmp_path, smoke_data), cwd=REPO, env=_env(), capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 1
    assert "1 done, 0 in flight elsewhere, 1 to run" in again.stderr
    assert (healthy / "result.json").stat().st_mtime_ns == result_mtime
    assert (healthy / "log.txt").read_text().count(TRAINING_STARTS) == 1
    assert (broken / "log.txt").read_text().count("not a readable checkpoint") >= 2
