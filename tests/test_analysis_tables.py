"""Gathering results and rebuilding the paper's tables from small synthetic run folders."""
from __future__ import annotations

import io
import json
import os
import statistics
from contextlib import redirect_stdout
from pathlib import Path

import pandas as pd
import pytest

from analysis import tables as tables_cli
from analysis.gather import SkippedRunWarning, gather_runs
from analysis.tables import DuplicateRunWarning, build_table
from experiments.tables import TABLES, model_config_for
from scnet.records.result import write_result
from scnet.records.run_dir import write_config


def spec(table: str, label: str, backbone: str = "r50"):
    return next(r for r in TABLES[table] if r.label == label and r.backbone == backbone)


def make_run(root: Path, name: str, row, seed: int = 0, *, scale: str = "smoke", segm_ap: float = 30.0,
             bbox_ap: float = 33.0, fps: float = 2.0, num_classes: int = 3, aps: float | None = 10.0) -> Path:
    """A finished run directory for `row`, as the trainer would leave it (through scnet.records)."""
    model = model_config_for(row, scale, num_classes=num_classes, num_semantic_classes=4)
    run_dir = root / name
    segm = {"AP": segm_ap, "AP50": segm_ap + 20, "AP75": segm_ap + 2, "APS": aps, "APM": segm_ap + 1,
            "APL": segm_ap + 5}
    bbox = dict(segm, AP=bbox_ap)
    write_config(run_dir, {"model": model.to_dict(), "seed": seed, "scale": scale})
    write_result(run_dir, {
        "config": {"model": model.to_dict(), "preset": f"{row.architecture}_x", "scale": scale, "seed": seed,
                   "data": {"root": "data/shapes"}, "schedule": {"iterations": 20}},
        "metrics": {"bbox": bbox, "segm": segm},
        "speed": {"images_per_s": fps, "device": "cpu"},
        "timing": {"train_s": 5.0, "eval_s": 1.0},
        "status": "done",
    })
    return run_dir


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    base = spec("table2", "Cascade Mask R-CNN")
    for seed, ap in ((0, 30.0), (1, 31.0), (2, 35.0)):
        make_run(root, f"base_s{seed}", base, seed, segm_ap=ap, bbox_ap=ap + 4, fps=1.0 + seed)
    make_run(root / "nested" / "deeper", "scnet_s0", spec("table1", "SCNet"), 0, segm_ap=36.0, bbox_ap=41.0,
             fps=3.0, aps=None)
    make_run(root, "scnet_paper", spec("table1", "SCNet"), 0, scale="paper", segm_ap=40.0)
    return root


def test_gather_reads_runs_and_skips_bad_files_by_name(runs):
    (runs / "half").mkdir()
    (runs / "half" / "result.json").write_text('{"format_version": 1, "config": {"mod')
    (runs / "foreign").mkdir()
    (runs / "foreign" / "result.json").write_text(json.dumps({"accuracy": 0.9}))
    (runs / "base_s0" / "checkpoints").mkdir()
    (runs / "base_s0" / "checkpoints" / "result.json").write_text("not looked at")
    with pytest.warns(SkippedRunWarning) as caught:
        frame = gather_runs(runs)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert "foreign/result.json: missing field 'format_version'" in messages[0]
    assert "half/result.json: not valid JSON" in messages[1]
    assert len(frame) == 5
    assert sorted(frame["seed"]) == [0, 0, 0, 1, 2]
    assert set(frame["scale"]) == {"smoke", "paper"}
    for column in ("segm_AP", "bbox_APL", "speed_fps", "config.data.root", "config.schedule.iterations",
                   "model.stages", "model.sample_consistency", "model_key", "run_dir"):
        assert column in frame.columns, column
    scnet = frame[frame["run_dir"].str.endswith("scnet_s0")].iloc[0]
    assert pd.isna(scnet["segm_APS"])  # None in the result, NaN in the frame
    assert scnet["model.bbox_target_stds"][0] == (0.1, 0.1, 0.2, 0.2)


def test_gather_empty_folder_has_the_base_columns(tmp_path):
    frame = gather_runs(tmp_path)
    assert frame.empty and {"scale", "seed", "model_key", "segm_AP"} <= set(frame.columns)
    with pytest.raises(FileNotFoundError, match="--runs"):
        gather_runs(tmp_path / "absent")


def test_seeds_give_mean_and_std_and_missing_rows_stay_empty(runs):
    table = build_table("table2", gather_runs(runs), "smoke")
    cell = table.cell("Cascade Mask R-CNN", "AP")
    assert cell.paper == 37.4
    assert cell.ours == pytest.approx(32.0)
    assert cell.std == pytest.approx(statistics.stdev([30.0, 31.0, 35.0]))
    assert cell.n == 3
    assert cell.diff == pytest.approx(32.0 - 37.4)
    assert table.cell("Cascade Mask R-CNN", "APbb").ours == pytest.approx(36.0)
    assert table.cell("Cascade Mask R-CNN", "speed_fps").ours == pytest.approx(2.0)
    assert table.cell("Cascade Mask R-CNN", "AP50").ours == pytest.approx(52.0)
    missing = table.cell("+ SC", "AP")
    assert (missing.paper, missing.ours, missing.std, missing.n, missing.diff) == (38.8, None, None, 0, None)
    full = table.cell("+ SC + FR + GC", "AP")
    assert (full.ours, full.std, full.n) == (36.0, None, 1)
    improvement = table.cell("Overall improvement", "AP")
    assert improvement.ours == pytest.approx(36.0 - 32.0)
    assert improvement.diff == pytest.approx(4.0 - 2.4)
    assert table.cell("Overall improvement", "speed_fps").ours == pytest.approx(3.0 - 2.0)


def test_markdown_latex_csv_show_empty_cells_never_numbers(runs, tmp_path):
    table = build_table("table2", gather_runs(runs), "smoke")
    markdown = table.to_markdown()
    assert "smoke scale" in markdown.splitlines()[0]
    line = next(l for l in markdown.splitlines() if l.startswith("| + SC |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # Row, Runs, then paper/ours/diff/vs base for AP AP50 AP75 APbb speed
    assert cells[:6] == ["+ SC", "0", "38.8", "", "", "(+1.4)"]
    assert cells[2::4] == ["38.8", "59.8", "41.7", "43.5", "6.5"]
    assert cells[5::4] == ["(+1.4)", "(+0.8)", "(+1.7)", "(+0.2)", "(+2.0)"]  # the paper's own differences
    assert all(c == "" for i, c in enumerate(cells[2:]) if i % 4 in (1, 2))
    base = next(l for l in markdown.splitlines() if l.startswith("| Cascade Mask R-CNN |"))
    assert "| 37.4 | 32.0 ± 2.6 | -5.4 |  |" in base
    for text in (markdown, table.to_latex(), table.to_csv()):
        assert "nan" not in text.lower()
    latex = table.to_latex()
    assert r"\begin{tabular}" in latex and "32.0$\\pm$2.6" in latex and "smoke scale" in latex
    paths = table.write(tmp_path / "tables")
    assert [p.name for p in paths] == ["table2_smoke.md", "table2_smoke.tex", "table2_smoke.csv"]
    back = pd.read_csv(paths[2])
    sc = back[(back["row"] == "+ SC") & (back["column"] == "AP")].iloc[0]
    assert sc["paper"] == 38.8 and pd.isna(sc["ours"]) and pd.isna(sc["diff"])
    assert back[(back["row"] == "Cascade Mask R-CNN") & (back["column"] == "AP")]["ours"].item() == pytest.approx(32.0)


def test_rows_are_matched_by_network_not_by_label(runs):
    frame = gather_runs(runs)
    # Table 5's lambda=3 and Table 1's SCNet (every backbone at smoke scale) are the same network
    assert build_table("table5", frame, "smoke").cell("lambda=3", "AP").ours == 36.0
    assert build_table("table5", frame, "smoke").cell("lambda=None", "AP").ours is None
    t1 = build_table("table1", frame, "smoke")
    assert [t1.cell("SCNet", "AP", b).ours for b in ("r50", "r101", "x101_64x4d")] == [36.0] * 3
    assert t1.cell("SCNet", "APS", "r50").ours is None  # the only run has APS undefined
    # Table 1's Cascade Mask R-CNN is MMDetection's config with HTC's semantic head, not Table 2's baseline,
    # which is Table 3's and Table 4's cascade row
    assert t1.cell("Cascade Mask R-CNN", "AP", "r50").ours is None
    assert build_table("table3", frame, "smoke").cell("CM R-CNN", "AP").ours == pytest.approx(32.0)
    assert t1.cell("HTC", "AP", "r50").ours is None
    panet = next(r for r in t1.rows if r.label == "PANet")
    assert panet.status == "quoted" and panet.cells["AP"].ours is None and panet.cells["AP"].paper == 36.6
    # at paper scale only the paper-scale run counts, and only for its backbone
    t1_paper = build_table("table1", frame, "paper")
    assert t1_paper.cell("SCNet", "AP", "r50").ours == 40.0
    assert t1_paper.cell("SCNet", "AP", "r101").ours is None
    assert t1_paper.cell("Cascade Mask R-CNN", "AP", "r50").ours is None


def test_same_network_with_other_dataset_classes_matches(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "a", spec("table4", "Mask R-CNN + FR"), 0, num_classes=7, segm_ap=20.0)
    make_run(root, "b", spec("table4", "Mask R-CNN"), 0, num_classes=7, segm_ap=18.0)
    table = build_table("table4", gather_runs(root), "smoke")
    assert table.cell("Mask R-CNN + FR", "AP").ours == 20.0
    assert table.cell("Mask R-CNN", "AP").ours == 18.0
    assert table.cell("Cascade Mask R-CNN + FR", "AP").ours is None


def test_duplicate_seed_uses_newest_run(tmp_path):
    root = tmp_path / "runs"
    old = make_run(root, "old", spec("table3", "CM R-CNN"), 0, segm_ap=10.0)
    make_run(root, "new", spec("table3", "CM R-CNN"), 0, segm_ap=12.0)
    os.utime(old / "result.json", (1_000_000, 1_000_000))
    with pytest.warns(DuplicateRunWarning, match="share a seed"):
        table = build_table("table3", gather_runs(root), "smoke")
    cell = table.cell("CM R-CNN", "AP")
    assert (cell.ours, cell.n) == (12.0, 1)


def test_build_table_refuses_unknown_names():
    with pytest.raises(KeyError, match="analysis.figure1"):
        build_table("figure1", pd.DataFrame(), "smoke")
    with pytest.raises(ValueError, match="unknown scale"):
        build_table("table2", pd.DataFrame(), "medium")


def test_command_line_prints_markdown_and_writes_files(runs, tmp_path):
    out = tmp_path / "tables"
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        assert tables_cli.main(["table3", "table4", "--runs", str(runs), "--scale", "smoke", "--out", str(out)]) == 0
    text = stdout.getvalue()
    assert "Table 3 (smoke scale)" in text and "Table 4 (smoke scale)" in text
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"table{n}_smoke.{ext}" for n in (3, 4) for ext in ("md", "tex", "csv"))
    with pytest.raises(SystemExit, match="several scales"):
        tables_cli.main(["table2", "--runs", str(runs), "--out", str(out)])


# ------------------------------------------------------------------------------------ noise and the zoo

def _seeds(root: Path, table: str, label: str, aps: list[float], prefix: str) -> None:
    for seed, ap in enumerate(aps):
        make_run(root, f"{prefix}_s{seed}", spec(table, label), seed, segm_ap=ap, bbox_ap=ap + 4)


def test_differences_within_the_seeds_spread_are_marked(tmp_path):
    root = tmp_path / "runs"
    _seeds(root, "table3", "CM R-CNN", [30.0, 32.0, 34.0], "base")  # mean 32, std 2
    _seeds(root, "table3", "CM R-CNN + naive SC", [32.5, 33.5, 34.5], "naive")  # mean 33.5, std 1: +1.5 <= 2
    _seeds(root, "table3", "CM R-CNN + effective SC", [36.0, 36.5, 37.0], "eff")  # mean 36.5: +4.5 > 2
    table = build_table("table3", gather_runs(root), "smoke")
    naive, effective = table.cell("CM R-CNN + naive SC", "AP"), table.cell("CM R-CNN + effective SC", "AP")
    assert naive.base_diff == pytest.approx(1.5) and naive.within_spread is True
    assert naive.paper_base_diff == pytest.approx(38.0 - 37.4)
    assert effective.base_diff == pytest.approx(4.5) and effective.within_spread is False
    assert table.cell("CM R-CNN", "AP").base_diff is None  # the baseline itself
    markdown = table.to_markdown()
    assert "| +1.5 ≈ (+0.6) |" in next(l for l in markdown.splitlines() if l.startswith("| CM R-CNN + naive SC |"))
    assert "| +4.5 (+1.4) |" in next(l for l in markdown.splitlines() if l.startswith("| CM R-CNN + effective SC |"))
    caption = markdown.splitlines()[0]
    assert "≈: the difference lies within the seeds' spread (|mean difference| <= the larger of the two rows'" in caption
    assert "Baselines: CM R-CNN + naive SC, CM R-CNN + effective SC vs CM R-CNN." in caption
    assert "differs from its baseline only in the components it adds" in caption  # how the rows were built
    assert r"$\approx$" in table.to_latex()
    frame = pd.read_csv(io.StringIO(table.to_csv()))
    marked = frame[(frame["row"] == "CM R-CNN + naive SC") & (frame["column"] == "AP")].iloc[0]
    assert marked["baseline"] == "CM R-CNN" and bool(marked["within_spread"]) and marked["vs_base"] == 1.5


def test_a_single_seed_says_it_has_no_spread(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "base", spec("table4", "Mask R-CNN"), 0, segm_ap=20.0)
    make_run(root, "fr", spec("table4", "Mask R-CNN + FR"), 0, segm_ap=20.1)
    table = build_table("table4", gather_runs(root), "smoke")
    cell = table.cell("Mask R-CNN + FR", "AP")
    assert cell.base_diff == pytest.approx(0.1) and cell.within_spread is None
    caption = table.to_markdown().splitlines()[0]
    assert "Single seed: no spread, so no difference is marked" in caption and "≈:" not in caption
    assert "≈" not in table.to_markdown().split("\n", 1)[1]
    # one row with seeds, its baseline with one: still not judged, and the caption says why
    make_run(root, "fr1", spec("table4", "Mask R-CNN + FR"), 1, segm_ap=22.1)
    mixed = build_table("table4", gather_runs(root), "smoke")
    assert mixed.cell("Mask R-CNN + FR", "AP").within_spread is None
    assert "Single seed: no spread" in mixed.caption


def test_the_derived_row_is_marked_by_its_two_rows_spread(tmp_path):
    root = tmp_path / "runs"
    _seeds(root, "table2", "Cascade Mask R-CNN", [30.0, 32.0, 34.0], "base")
    _seeds(root, "table2", "+ SC + FR + GC", [31.0, 33.0, 35.0], "full")
    cell = build_table("table2", gather_runs(root), "smoke").cell("Overall improvement", "AP")
    assert cell.ours == pytest.approx(1.0) and cell.within_spread is True and cell.paper_base_diff == 2.4


def test_paper_scale_tables_show_the_zoo_where_a_row_is_a_zoo_model(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "scnet", spec("table5", "lambda=3"), 0, scale="paper", segm_ap=39.9, bbox_ap=44.4)
    frame = gather_runs(root)
    table5 = build_table("table5", frame, "paper")
    assert (table5.cell("lambda=3", "AP").zoo, table5.cell("lambda=3", "APbb").zoo) == (40.0, 44.5)  # SCNet R50 20e
    assert table5.cell("lambda=2", "AP").zoo is None and table5.cell("lambda=3", "AP50").zoo is None
    head = table5.to_markdown().splitlines()[2]
    assert "| AP zoo |" in head and "| APbb zoo |" in head and "AP50 zoo" not in head
    table1 = build_table("table1", frame, "paper")
    assert [table1.cell("SCNet", "APbb", b).zoo for b in ("r50", "r101", "x101_64x4d")] == [44.5, 45.8, 47.5]
    assert [table1.cell("HTC", "AP", b).zoo for b in ("r50", "r101", "x101_64x4d")] == [38.3, 39.6, None]
    assert table1.cell("Cascade Mask R-CNN", "AP", "r50").zoo is None  # with a semantic branch: no zoo model
    assert "zoo" not in build_table("table5", frame, "smoke").to_markdown()  # smoke networks are not zoo models
