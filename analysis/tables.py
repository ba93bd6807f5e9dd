"""Rebuild the paper's Tables 1-5 from gathered runs, beside the paper's own numbers.

    python -m analysis.tables table2 --runs results/runs            # Markdown to stdout, files in results/tables
    python -m analysis.tables all --runs results/runs --scale smoke --out results/tables

Rows are matched to runs by their resolved network (see `analysis.matching`); a row with no
finished run is printed with empty cells.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from typing import Sequence

import pandas as pd

from analysis.matching import row_key
from analysis.paper import paper_lookup
from analysis.spread import mean_std, spread_note, within_spread
from analysis.table_result import Cell, RowResult, TableResult
from analysis.zoo import zoo_values_for_row
from experiments.runspec import SCHEDULE
from experiments.tables import TABLE_COLUMNS, TABLE_NOTES, TABLE_TITLES, RowSpec, rows_of
from scnet.engine.run_config import SCALES

METRIC_COLUMN = {
    "AP": "segm_AP", "AP50": "segm_AP50", "AP75": "segm_AP75",
    "APS": "segm_APS", "APM": "segm_APM", "APL": "segm_APL",
    "APbb": "bbox_AP", "speed_fps": "speed_fps",
}
BUILDABLE = ("table1", "table2", "table3", "table4", "table5")


class DuplicateRunWarning(UserWarning):
    """Two finished runs of the same network and seed; the newer one is used."""


def runs_for(row: RowSpec, runs_df: pd.DataFrame, scale: str) -> pd.DataFrame:
    """The row's finished runs at `scale`, one per seed (the newest where a seed was run twice)."""
    if not row.run or runs_df.empty:
        return runs_df.iloc[0:0]
    matched = runs_df[(runs_df["scale"] == scale) & (runs_df["model_key"] == row_key(row, scale))]
    if matched["seed"].duplicated().any():
        dupes = sorted(matched.loc[matched["seed"].duplicated(keep=False), "run_dir"])
        shown = ", ".join(dupes[:4]) + (f" and {len(dupes) - 4} more" if len(dupes) > 4 else "")
        warnings.warn(f"{row.table} row {row.label!r}: several runs share a seed; using the newest of each seed "
                      f"among {shown}", DuplicateRunWarning, stacklevel=2)
        matched = matched.sort_values("mtime").drop_duplicates("seed", keep="last")
    return matched.sort_values("seed")


def _paper_value(paper: dict, row: RowSpec, column: str) -> float | None:
    return paper.get((row.table, row.label, row.backbone, column))


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _derived(row: RowSpec, built: dict[tuple[str, str], RowResult], columns: Sequence[str],
             paper: dict) -> RowResult:
    """A row the paper derives from two others (label minus label): itself a difference, so marked too."""
    minuend, subtrahend = (built[(label, row.backbone)] for label in row.difference_of)  # type: ignore[union-attr]
    cells = {}
    for column in columns:
        a, b = minuend.cells[column], subtrahend.cells[column]
        ours = _difference(a.ours, b.ours)
        n = min(a.n, b.n) if ours is not None else 0
        value = _paper_value(paper, row, column)
        cells[column] = Cell(value, ours, None, n, base_diff=ours, paper_base_diff=value,
                             within_spread=within_spread(ours, a.std, b.std))
    return RowResult(row.label, row.backbone, "derived", (), (), cells)


def _compared(result: RowResult, baseline: RowResult) -> RowResult:
    """`result` with each cell's difference from `baseline` and whether the seeds' spread covers it."""
    cells = {}
    for column, cell in result.cells.items():
        base = baseline.cells[column]
        diff = _difference(cell.ours, base.ours)
        cells[column] = dataclasses.replace(
            cell, base_diff=diff, paper_base_diff=_difference(cell.paper, base.paper),
            within_spread=within_spread(diff, cell.std, base.std))
    return dataclasses.replace(result, cells=cells, baseline=baseline.label)


def _run_row(spec: RowSpec, runs_df: pd.DataFrame, scale: str, columns: Sequence[str], paper: dict,
             zoo: dict[str, float]) -> RowResult:
    runs = runs_for(spec, runs_df, scale)
    cells = {}
    for column in columns:
        mean, std, n = mean_std(runs[METRIC_COLUMN[column]].astype(float)) if len(runs) else (None, None, 0)
        cells[column] = Cell(_paper_value(paper, spec, column), mean, std, n, zoo=zoo.get(column))
    return RowResult(spec.label, spec.backbone, "run" if spec.run else "quoted",
                     tuple(int(s) for s in runs["seed"]), tuple(runs["run_dir"]), cells)


def build_table(name: str, runs_df: pd.DataFrame, scale: str, paper: dict | None = None) -> TableResult:
    """Table `name` at `scale` from `analysis.gather.gather_runs` output (the experiment harness calls this)."""
    if name not in BUILDABLE:
        hint = " (Figure 1 is built by analysis.figure1)" if name == "figure1" else ""
        raise KeyError(f"unknown table {name!r}{hint}; known: {', '.join(BUILDABLE)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; use one of {SCALES}")
    paper = paper_lookup() if paper is None else paper
    columns = TABLE_COLUMNS[name]
    built: dict[tuple[str, str], RowResult] = {}
    for spec in rows_of(name):
        if spec.difference_of:
            built[(spec.label, spec.backbone)] = _derived(spec, built, columns, paper)
        else:
            # the tables train the paper's 20 epochs, so a zoo model's 20e figures stand beside them
            zoo = zoo_values_for_row(spec, SCHEDULE) if scale == "paper" else {}
            built[(spec.label, spec.backbone)] = _run_row(spec, runs_df, scale, columns, paper, zoo)
    for spec in rows_of(name):
        if spec.baseline is not None:
            key = (spec.label, spec.backbone)
            built[key] = _compared(built[key], built[(spec.baseline, spec.backbone)])
    rows = list(built.values())
    return TableResult(name, scale, TABLE_TITLES[name], columns, rows, show_backbone=(name == "table1"),
                       notes=_notes(name, scale, rows))


def _notes(name: str, scale: str, rows: Sequence[RowResult]) -> tuple[str, ...]:
    """How the rows were built, what each is compared with, how noise is marked, and the scale."""
    notes = [TABLE_NOTES[name], _baselines_note(rows)]
    judged = [cell.within_spread is not None for row in rows for cell in row.cells.values()
              if cell.base_diff is not None]
    notes.append(spread_note(sum(judged), len(judged) - sum(judged)))
    if scale == "smoke":
        notes.append("Smoke scale: synthetic data and ResNet-18 smoke presets on CPU; these numbers test the "
                     "pipeline, not the paper's claims.")
        if name == "table1":
            notes.append("At smoke scale rows that differ only in backbone are one network.")
    elif name == "table1":
        notes.append("The paper evaluates Table 1 on COCO test-dev; our runs (and the zoo) are evaluated on the "
                     "split named in their config.")
    return tuple(note for note in notes if note)


def _baselines_note(rows: Sequence[RowResult]) -> str:
    """'Baselines: + SC, + FR vs Cascade Mask R-CNN; + SC + FR vs + SC.' (each row listed once)."""
    by_base: dict[str, list[str]] = {}
    for row in rows:
        if row.baseline is not None and row.label not in by_base.setdefault(row.baseline, []):
            by_base[row.baseline].append(row.label)
    parts = [f"{', '.join(labels)} vs {base}" for base, labels in by_base.items()]
    return f"Baselines: {'; '.join(parts)}." if parts else ""


def infer_scale(runs_df: pd.DataFrame, where: str) -> str:
    """The one scale present in the runs; ambiguity or no runs is an error asking for --scale."""
    scales = sorted(set(runs_df["scale"].dropna())) if not runs_df.empty else []
    if len(scales) == 1:
        return scales[0]
    if not scales:
        raise SystemExit(f"no finished runs under {where}; pass --scale smoke|paper to print empty tables")
    raise SystemExit(f"runs of several scales ({', '.join(scales)}) under {where}; pass --scale")


def main(argv: Sequence[str] | None = None) -> int:
    from analysis.gather import gather_runs

    parser = argparse.ArgumentParser(prog="python -m analysis.tables", description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+", choices=[*BUILDABLE, "all"], help="tables to build")
    parser.add_argument("--runs", default="results/runs", help="folder searched for result.json files")
    parser.add_argument("--scale", choices=SCALES, help="scale to tabulate (default: the one the runs have)")
    parser.add_argument("--out", default="results/tables", help="folder for the .md/.tex/.csv files")
    args = parser.parse_args(argv)
    names = list(BUILDABLE) if "all" in args.tables else list(dict.fromkeys(args.tables))
    try:
        runs_df = gather_runs(args.runs)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    scale = args.scale or infer_scale(runs_df, args.runs)
    for name in names:
        table = build_table(name, runs_df, scale)
        sys.stdout.write(table.to_markdown() + "\n")
        for path in table.write(args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
