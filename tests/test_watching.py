"""Watching runs as researchers do: curves (`analysis.curves`), live `--status`, TensorBoard event files.

One real run (Table 4's "Mask R-CNN" at smoke scale, 6 iterations on tiny synthetic images, a row
every 2 iterations, lr / 10 at iteration 4) is read back by every test; a run "still training" is
that run's folder with its later rows and result removed.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.curves import load_run_curves, main as curves_main, plot_curves, save_curves, table_runs, use_log_scale
from experiments.executors.queue import QueueEntry
from experiments.progress import STALL_FLOOR_S, STALL_INTERVALS, read_progress
from experiments.run import main as run_main
from experiments.runspec import run_config_for
from experiments.status import State, run_status
from experiments.tables import rows_of
from scnet.data import ensure_synthetic
from scnet.engine import run_training
from scnet.engine.run_lock import RunLock
from scnet.engine.run_log import MetricsLineWarning, read_metrics
from scnet.engine.tensorboard_log import NOT_SCALARS, open_tensorboard_log, tensorboard_installed
from scnet.records.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = {"schedule.max_iters": 6, "schedule.log_every": 2, "schedule.lr_steps": [4], "schedule.warmup_iters": 2,
             "schedule.batch_size": 2, "schedule.checkpoint_every": 100, "image_scale": [128, 96], "num_workers": 0,
             "eval.max_images": 2, "eval.speed_warmup": 0}
SET_ARGS = [arg for key, value in OVERRIDES.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return ensure_synthetic(tmp_path_factory.mktemp("data") / "shapes", seed=0, train=4, val=2, size=(128, 96))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """(runs root, run folder, result) of the real run; one thread keeps it fast on a shared CPU."""
    row = next(r for r in rows_of("table4") if r.label == "Mask R-CNN")
    config = run_config_for(row, "smoke", data.resolve(), overrides=OVERRIDES)
    runs_root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_training(config, runs_root / config.run_id(), progress=False)
    finally:
        torch.set_num_threads(threads)
    return runs_root, runs_root / config.run_id(), result


def _live_copy(run_dir: Path, dest: Path, rows: int) -> Path:
    """The run as it was after its first `rows` metrics rows: no result, no later rows."""
    dest.mkdir(parents=True)
    for name in ("config.json", "log.txt"):
        shutil.copy(run_dir / name, dest / name)
    lines = (run_dir / RunDir.METRICS).read_text().splitlines()[:rows]
    (dest / RunDir.METRICS).write_text("".join(f"{line}\n" for line in lines))
    return dest


def _age(run_dir: Path, seconds: float) -> None:
    """Make the run's last record and log line `seconds` old."""
    stamp = time.time() - seconds
    for name in (RunDir.METRICS, "log.txt"):
        os.utime(run_dir / name, (stamp, stamp))


def _line(fig, gid: str):
    found = [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == gid]
    assert len(found) == 1, gid
    return found[0]


# -------------------------------------------------------------------------------------------- curves

@pytest.mark.slow
def test_curves_draw_the_logged_series_with_moving_average_and_schedule_lr_steps(run, tmp_path):
    _, run_dir, result = run
    rows = read_metrics(run_dir)
    assert [row["iter"] for row in rows] == [2, 4, 6]
    curves = load_run_curves(run_dir)
    assert curves.label == "table1: Mask R-CNN (r50); table4: Mask R-CNN"  # at smoke scale one network
    assert curves.lr_steps == (4,) and curves.total == 6 and curves.finished
    terms = [k for k in rows[0] if k not in ("iter", "epoch", "lr", "time", "data_time", "eta_s", "total_iters",
                                             "iters_per_epoch")]
    assert set(curves.loss_terms) == set(terms) and curves.loss_terms[0] == "loss" and len(terms) >= 5

    fig = plot_curves([curves], smooth=2)
    losses = [row["loss"] for row in rows]
    np.testing.assert_array_equal(_line(fig, "loss:0:raw").get_xdata(), [2, 4, 6])
    np.testing.assert_allclose(_line(fig, "loss:0:raw").get_ydata(), losses)
    np.testing.assert_allclose(_line(fig, "loss:0:smooth").get_ydata(),
                               [losses[0], (losses[0] + losses[1]) / 2, (losses[1] + losses[2]) / 2])
    for term in terms:
        np.testing.assert_allclose(_line(fig, f"{term}:0:raw").get_ydata(), [row[term] for row in rows])
    np.testing.assert_allclose(_line(fig, "lr:0:raw").get_ydata(), [row["lr"] for row in rows])
    assert rows[-1]["lr"] == pytest.approx(rows[1]["lr"] / 10)  # the step the schedule put at iteration 4
    np.testing.assert_allclose(_line(fig, "s_per_iter:0:raw").get_ydata(),
                               [row["time"] + row["data_time"] for row in rows])
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(terms) + 2
    for ax in panels:
        assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_gid() == "lr_step:4"] == [4]
        values = np.concatenate([line.get_ydata() for line in ax.get_lines() if str(line.get_gid()).endswith(":raw")])
        assert ax.get_yscale() == ("log" if use_log_scale(values) else "linear")

    paths = save_curves(fig, tmp_path / "curves.png")
    assert paths == [tmp_path / "curves.png", tmp_path / "curves.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


def test_log_scale_only_where_values_span_more_than_a_decade():
    assert use_log_scale(np.array([5.0, 2.0, 0.3]))
    assert not use_log_scale(np.array([1.2, 0.9, 0.5]))
    assert not use_log_scale(np.array([3.0, 0.0, 0.01]))  # zero has no logarithm
    assert not use_log_scale(np.array([np.nan]))


def test_a_table_name_plots_the_runs_it_has_and_names_the_rows_without_one(run, tmp_path, capsys):
    runs_root, run_dir, _ = run
    live = _live_copy(run_dir, tmp_path / "runs" / run_dir.name, rows=1)
    before = sorted(p.name for p in live.parent.iterdir())
    assert curves_main(["table4", "--runs", str(live.parent), "--out", str(tmp_path / "t4.png")]) == 0
    out, err = capsys.readouterr()
    assert "table4: no run yet for row(s): Mask R-CNN + FR, Cascade Mask R-CNN, Cascade Mask R-CNN + FR" in err
    assert out.startswith(f"Mask R-CNN (at 2/6): {live} (1 rows, up to iteration 2)")
    assert (tmp_path / "t4.png").exists() and (tmp_path / "t4.pdf").exists()
    assert sorted(p.name for p in live.parent.iterdir()) == before  # nothing was started

    found = table_runs("table4", runs_root)
    assert [c.label for c in found.curves] == ["Mask R-CNN"] and found.scale == "smoke"
    assert curves_main(["table3", "--runs", str(runs_root), "--out", str(tmp_path / "t3.png")]) == 2
    assert capsys.readouterr().err.startswith("error: table3: no run of its rows under")
    assert curves_main(["tabel4", "--out", str(tmp_path / "x.png")]) == 2
    assert "error: tabel4: neither a run folder nor a table name ;" in capsys.readouterr().err


def test_a_cut_metrics_line_is_skipped_with_a_warning_never_a_traceback(run, tmp_path, capsys):
    _, run_dir, _ = run
    cut = _live_copy(run_dir, tmp_path / "cut", rows=3)
    with open(cut / RunDir.METRICS, "a") as handle:
        handle.write('[1, 2]\n{"iter": 8, "lo')  # a foreign line, then the line a kill cut short
    with pytest.warns(MetricsLineWarning, match=r"skipped line\(s\) 4, 5"):
        assert [row["iter"] for row in read_metrics(cut)] == [2, 4, 6]
    with pytest.warns(MetricsLineWarning, match="2 of its last lines"):
        assert [row["iter"] for row in read_metrics(cut, last=3)] == [6]
    assert curves_main([str(cut), "--out", str(tmp_path / "cut.png")]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "skipped line(s) 4, 5" in err and "Traceback" not in err
    assert read_progress(cut).iteration == 6  # status reads it quietly


# -------------------------------------------------------------------------------------------- status

def test_status_line_of_a_running_run_locally_and_on_slurm(run, tmp_path):
    _, run_dir, _ = run
    rows = read_metrics(run_dir)
    live = _live_copy(run_dir, tmp_path / "live", rows=2)
    _age(live, 5)
    with RunLock(live) as lock:
        assert lock.held
        status = run_status(live)
    assert status.state is State.RUNNING
    expected = f"iteration 4/6 (67%), loss {rows[1]['loss']:.4g}, ETA "
    assert expected in status.detail and re.search(r"last record ([5-9]|[1-5]\d) s ago", status.detail), status.detail
    assert "STALLED" not in status.detail

    # A SLURM job: its id and state from squeue, its progress from the run folder (on the shared file
    # system); the job's training process holds the run's lock as a local one does.
    (live / "attempt.json").write_text(json.dumps({"state": "started", "executor": "slurm", "slurm_job_id": "4242"}))
    for held in (False, True):
        with RunLock(live) if held else contextlib.nullcontext():
            running = run_status(live, {"4242": QueueEntry("4242", "RUNNING", "None")})
        assert running.state is State.RUNNING and running.detail.startswith(f"SLURM job 4242 running; {expected}")
    waiting = run_status(live, {"4242": QueueEntry("4242", "PENDING", "Priority")})
    assert waiting.state is State.QUEUED and waiting.detail == "SLURM job 4242 pending (Priority)"
    with RunLock(live):  # the job left the queue (gone from squeue) while its process still holds the lock
        assert run_status(live, {}).detail.startswith("locked by pid=")


def test_a_run_silent_for_several_of_its_log_intervals_is_flagged_as_possibly_stalled(run, tmp_path):
    _, run_dir, _ = run
    rows = read_metrics(run_dir)
    live = _live_copy(run_dir, tmp_path / "live", rows=2)
    progress = read_progress(live)
    s_per_iter = max(row["time"] + row["data_time"] for row in rows[:2])
    assert progress.log_every == 2 and progress.s_per_iter == pytest.approx(s_per_iter)
    limit = max(STALL_INTERVALS * 2 * s_per_iter, STALL_FLOOR_S)
    assert progress.stall_after_s == pytest.approx(limit)
    _age(live, limit / 2)
    assert not read_progress(live).possibly_stalled
    _age(live, limit + 5)
    stalled = read_progress(live)
    assert stalled.possibly_stalled and "POSSIBLY STALLED" in stalled.describe() and "ETA" not in stalled.describe()
    # Training done: the run is evaluating, which writes nothing until it ends; never flagged.
    _age(run_dir, 10 * limit)
    done = read_progress(run_dir)
    assert done.training_done and not done.possibly_stalled and "training done, evaluating" in done.describe()


def test_experiments_run_status_prints_the_progress_line(run, data, tmp_path, capsys):
    _, run_dir, _ = run
    live = _live_copy(run_dir, tmp_path / "runs" / run_dir.name, rows=2)
    _age(live, 3)
    with RunLock(live):
        code = run_main(["table4", "--status", "--runs-dir", str(live.parent), "--data", str(data), *SET_ARGS])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{run_dir.name}  running" in out and "iteration 4/6 (67%)" in out, out
    assert re.search(r"last record ([3-9]|[1-5]\d) s ago", out), out  # 3 s, and however long the command took


# ---------------------------------------------------------------------------------------- TensorBoard

@pytest.mark.skipif(not tensorboard_installed(), reason="the optional tensorboard package is not installed "
                                                        "(pip install -e '.[tensorboard]')")
def test_event_files_hold_the_metrics_rows_and_the_final_coco_metrics(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, result = run
    assert list(run_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run_dir))
    events.Reload()
    rows = read_metrics(run_dir)
    train = {f"train/{k}" for k in rows[0] if k not in NOT_SCALARS}
    final = {f"val/{kind}_{name}" for kind in ("bbox", "segm") for name in ("AP", "AP50", "AP75", "APS", "APM", "APL")
             if result["metrics"][kind][name] is not None}
    assert set(events.Tags()["scalars"]) == train | final
    for tag in train:
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [row["iter"] for row in rows]
        assert [e.value for e in logged] == pytest.approx([row[tag[6:]] for row in rows], rel=1e-6)
    for tag in final:
        kind, name = tag[4:].split("_")
        assert [(e.step, e.value) for e in events.Scalars(tag)] == [(6, pytest.approx(result["metrics"][kind][name]))]


@pytest.mark.skipif(not tensorboard_installed(), reason="the optional tensorboard package is not installed")
def test_a_resumed_run_hides_the_events_its_killed_attempt_wrote_after_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = open_tensorboard_log(tmp_path)
    for it in (1, 2, 3, 4):
        first.add_row({"iter": it, "loss": float(it)})
    first.close()
    # A resumed attempt is a later process, so its event file, named after the second it opened, sorts
    # after the killed one's. Two writers of one process in one second differ only by a process-wide
    # counter, compared as text ('.10' sorts before '.9'): the order this test means would then depend
    # on how many writers the process made before (under pytest-xdist it broke).
    time.sleep(1.02 - time.time() % 1.0)
    resumed = open_tensorboard_log(tmp_path, resumed_at=2)
    for it in (3, 4):
        resumed.add_row({"iter": it, "loss": 10.0 * it})
    resumed.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


WITHOUT_TENSORBOARD = """
import sys
sys.modules["tensorboard"] = None  # as if it were not installed: find_spec answers None, import fails
import json, torch
from scnet.engine import RunConfig, run_training
from scnet.engine.tensorboard_log import tensorboard_installed
torch.set_num_threads(1)
config = RunConfig.from_dict(json.loads(sys.argv[1]))
run_training(config, sys.argv[2], progress=False)
imported = [m for m, module in sys.modules.items() if module is not None
            and (m.split(".")[0] == "tensorboard" or m.startswith("torch.utils.tensorboard"))]
print(json.dumps({"installed": tensorboard_installed(), "imported": sorted(imported)}))
"""


@pytest.mark.slow
def test_without_tensorboard_nothing_is_imported_and_no_event_file_written(run, tmp_path):
    _, run_dir, _ = run
    config = json.loads((run_dir / "config.json").read_text())
    config["schedule"]["max_iters"], config["eval"]["enabled"] = 2, False
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", WITHOUT_TENSORBOARD, json.dumps(config), str(tmp_path / "run")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {"installed": False, "imported": []}
    assert [row["iter"] for row in read_metrics(tmp_path / "run")] == [2]
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))
