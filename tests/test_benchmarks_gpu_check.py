"""benchmarks/gpu_check.py has not met a GPU in CI: its --device cpu --quick mode at least runs every
check's code (training steps, batch-1 timing, the oracle comparison, a two-process DDP step with
gloo through the engine's process-group set-up) and prints the one table."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_quick_mode_runs_on_cpu_and_prints_one_table():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| check | preset | mode | status |")
    rows = [line.split(" | ") for line in table[1:] if not line.startswith("|---")]
    checks = {(r[0].strip("| "), r[1], r[3]) for r in rows}
    for preset in ("mask_rcnn_r18_smoke", "cascade_mask_rcnn_r18_smoke", "htc_r18_smoke", "scnet_r18_smoke"):
        assert ("train", preset, "ok") in checks and ("infer", preset, "ok") in checks, preset
    assert ("ddp", "mask_rcnn_r18_smoke", "ok") in checks
    reference = REPO.parent / "shared" / "reference"
    if reference.is_dir():  # on CPU the oracle row is informational (bit-exact only on the oracle's CPU)
        assert any(r[0].strip("| ") == "oracle" and r[1] == "mask_rcnn_r50" and r[3] in ("ok", "differs")
                   for r in rows)
    assert "same weights on both ranks" in done.stdout
