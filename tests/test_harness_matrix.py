"""The experiment harness's run matrix: what runs a table needs, their identity, and bad input.

Nothing here trains; the CLI runs in this process (the `harness` fixture: exit status, stdout, stderr).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.runspec import UsageError, build_matrix, resolve_data_root, resolve_tables
from experiments.tables import TABLES
from scnet.engine.run_config import RunConfig

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_prints_one_line_per_run_with_flags_and_state(harness, tmp_path):
    runs, data = tmp_path / "runs", tmp_path / "shapes"
    done = harness("table2", "--dry-run", "--runs-dir", str(runs), "--data", str(data))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    run_lines = [line for line in lines if len(line) > 12 and line[:12].isalnum() and line[12:14] == "  "]
    assert len(run_lines) == 6  # Table 2 has six networks
    by_row = {line.split("table2: ")[1]: line for line in run_lines}
    assert set(by_row) == {row.label for row in TABLES["table2"] if row.run}
    base = ("preset=cascade_mask_rcnn_r18_smoke rcnn_match_low_quality=true semantic=true semantic_residual=true "
            "test_score_thr=0.001")
    assert base in by_row["Cascade Mask R-CNN"]
    assert "sample_consistency=effective" in by_row["+ SC"] and "feature_relay" not in by_row["+ SC"]
    assert "global_context=true" in by_row["+ GC"] and "seed=0" in by_row["+ GC"]
    assert all(" pending " in line for line in run_lines)
    assert lines[-1] == "6 run(s): 6 pending"
    # A dry run creates nothing: no run directories, no dataset.
    assert not runs.exists() and not data.exists()


def test_rows_quoted_from_other_work_have_no_run():
    matrix = build_matrix(["table1"], "paper", Path("/coco"))
    labels = {label for spec in matrix for _, label in spec.rows}
    assert not any(label.startswith(("PANet", "BlendMask", "D2Det", "LevelSet", "BMask")) for label in labels)
    assert len(matrix) == 10  # Mask R-CNN R-50 + 3 cascade models x 3 backbones


def test_rows_of_several_tables_that_are_one_network_are_one_run():
    table2 = build_matrix(["table2"], "smoke", Path("/d"))
    table5 = build_matrix(["table5"], "smoke", Path("/d"))
    both = build_matrix(["table2", "table5"], "smoke", Path("/d"))
    # "+ SC + FR" is lambda=None and "+ SC + FR + GC" is lambda=3.
    assert len(both) == len(table2) + len(table5) - 2
    assert len({spec.run_id for spec in both}) == len(both)
    shared = {spec.run_id: spec.rows for spec in both if len(spec.rows) > 1}
    assert sorted(shared.values()) == sorted([
        (("table2", "+ SC + FR"), ("table5", "lambda=None")),
        (("table2", "+ SC + FR + GC"), ("table5", "lambda=3")),
    ])


def test_smoke_scale_folds_backbones_and_all_tables_dedupe():
    assert len(build_matrix(["table1"], "smoke", Path("/d"))) == 4  # backbones are one smoke network
    everything = build_matrix(resolve_tables(["all"]), "smoke", Path("/d"))
    # Table 1's Cascade Mask R-CNN (MMDetection's config + HTC's semantic head) is not the ablation base
    assert len(everything) == 15
    assert len(build_matrix(resolve_tables(["all"]), "paper", Path("/d"))) == 21


def test_seeds_repeat_every_run_with_distinct_ids():
    one = build_matrix(["table3"], "smoke", Path("/d"))
    three = build_matrix(["table3"], "smoke", Path("/d"), seeds=3)
    assert len(three) == 3 * len(one)
    assert sorted(spec.config.seed for spec in three) == [0] * 3 + [1] * 3 + [2] * 3
    assert len({spec.run_id for spec in three}) == 9


@pytest.mark.slow
def test_run_id_is_stable_across_processes_and_config_files(tmp_path):
    ids = [spec.run_id for spec in build_matrix(["table4"], "smoke", tmp_path)]
    code = ("import json, sys; from pathlib import Path; from experiments.runspec import build_matrix; "
            f"print(json.dumps([s.run_id for s in build_matrix(['table4'], 'smoke', Path({str(tmp_path)!r}))]))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"}, cwd=REPO)
    assert json.loads(other.stdout) == ids
    for spec in build_matrix(["table4"], "smoke", tmp_path):
        written = json.loads(json.dumps(spec.config.to_frozen_dict()))  # what config.json holds
        assert RunConfig.from_dict(written).run_id() == spec.run_id
        earlier = json.loads(json.dumps(spec.config.to_dict()))  # config.json before it held "model"
        assert RunConfig.from_dict(earlier).run_id() == spec.run_id


def test_a_changed_config_is_a_new_run():
    base = build_matrix(["table3"], "smoke", Path("/d"))
    shorter = build_matrix(["table3"], "smoke", Path("/d"), overrides={"schedule.max_iters": 10})
    assert {s.run_id for s in base}.isdisjoint(s.run_id for s in shorter)
    assert all(s.config.schedule.max_iters == 10 for s in shorter)


def test_status_reports_every_run_pending_before_anything_ran(harness, tmp_path):
    done = harness("table3", "--status", "--runs-dir", str(tmp_path / "runs"), "--data", str(tmp_path / "d"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "3 run(s): 3 pending"


# ------------------------------------------------------------------------------------- bad input

def _usage_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done.stderr


def test_unknown_table_is_a_usage_error_with_a_suggestion(harness):
    message = _usage_error(harness("tabel2", "--dry-run"))
    assert "unknown table 'tabel2'" in message and "did you mean 'table2'" in message


def test_paper_data_without_coco_annotations_is_refused_before_anything_runs(harness, tmp_path):
    (tmp_path / "coco").mkdir()
    profile = REPO / "slurm" / "profiles" / "example.toml"
    message = _usage_error(harness("table5", "--scale", "paper", "--data", str(tmp_path / "coco"),
                                   "--profile", str(profile), "--runs-dir", str(tmp_path / "runs")))
    assert "annotations/instances_train2017.json" in message
    assert not (tmp_path / "runs").exists()
    with pytest.raises(UsageError, match="needs --data"):
        resolve_data_root("paper", None)


def test_paper_scale_without_a_profile_asks_for_one(harness, tmp_path):
    message = _usage_error(harness("table2", "--scale", "paper", "--data", str(tmp_path)))
    assert "--profile" in message


def test_misspelt_profile_key_names_file_key_and_suggestion(harness, tmp_path):
    profile = tmp_path / "cluster.toml"
    profile.write_text('partiton = "gpu"\ngpus_per_node = 8\n')
    message = _usage_error(harness("table2", "--profile", str(profile), "--dry-run"))
    assert str(profile) in message and "'partiton'" in message and "did you mean 'partition'" in message


def test_misspelt_override_is_a_usage_error(harness):
    message = _usage_error(harness("table2", "--dry-run", "--set", "schedule.max_iter=5"))
    assert "did you mean 'max_iters'" in message


def test_no_wait_with_the_inline_executor_is_refused(harness, tmp_path):
    message = _usage_error(harness("table3", "--executor", "inline", "--no-wait", "--data", str(tmp_path / "d"),
                                   "--runs-dir", str(tmp_path / "runs")))
    assert "--no-wait" in message


@pytest.mark.parametrize("option", ["--out", "--runs-dir"])
def test_an_output_folder_under_a_file_is_refused_before_anything_runs(option, tmp_path, capsys):
    from experiments.run import main

    (tmp_path / "file").write_text("x")
    paths = {"--out": str(tmp_path / "out"), "--runs-dir": str(tmp_path / "runs"), option: str(tmp_path / "file")}
    code = main(["table2", "--executor", "inline", "--no-progress", "--data", str(tmp_path / "shapes"),
                 *[x for pair in paths.items() for x in pair]])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {option} {tmp_path / 'file'}" in err and "is a file, not a folder" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing made, nothing trained


def test_dry_run_plan_prices_each_extra_seed():
    """--seeds N at paper scale: the footer says what one more seed costs (one seed's runs), beside the total."""
    from experiments.estimate import Throughput
    from experiments.plan import ClusterPlan

    plan = ClusterPlan(world=8, gpus=8, resources="8 GPUs", scale="paper", throughput=Throughput(assumed=4.0))
    three = build_matrix(["table3"], "paper", Path("/coco"), seeds=3)
    lines = plan.footer(three, three)
    assert lines[0].startswith("total: ~1,466 GPU-h for 9 run(s)")  # 9 runs of ~163 GPU-h
    assert lines[1].startswith("seeds: 3; each extra seed (--seeds 4, ...) adds ~489 GPU-h for 3 run(s)")
    assert ClusterPlan(world=1, gpus=0, resources="cpu", scale="smoke", throughput=Throughput(assumed=4.0)).footer(three, []) == []

