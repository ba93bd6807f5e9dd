"""What `python -m experiments.run` prints: the run matrix with each run's state, a line per run as it
ends (a failure with the tail of its log), and the rebuilt tables and Figure 1 of the finished runs.
"""
from __future__ import annotations

import sys
import warnings
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from experiments.plan import ClusterPlan
from experiments.runspec import RunSpec
from experiments.status import RunStatus, State, failure_report
from scnet.records.run_dir import RunDir


def _flags_width(matrix: list[RunSpec]) -> int:
    return min(80, max((len(spec.describe()) for spec in matrix), default=10))


def print_matrix(matrix: list[RunSpec], statuses: list[RunStatus], header: str, with_detail: bool,
                 plan: ClusterPlan | None = None) -> None:
    print(header)
    width = _flags_width(matrix)
    for spec, status in zip(matrix, statuses):
        line = f"{spec.run_id}  {status.state.value:<8} {spec.describe():<{width}}  {spec.row_labels()}"
        if with_detail:
            extra = status.detail
            if status.state is State.FAILED and status.log is not None:
                extra = f"{extra}; log: {status.log}"
            if extra:
                line += f"\n{'':14}{extra}"
        if plan is not None:
            line += "".join(f"\n{'':14}{text}" for text in plan.run_lines(spec))
        print(line)
    counts = Counter(status.state for status in statuses)
    summary = ", ".join(f"{counts[state]} {state.value}" for state in State if counts[state])
    print(f"{len(matrix)} run(s): {summary or 'none'}")
    if plan is not None:
        todo = [spec for spec, status in zip(matrix, statuses) if status.state in (State.PENDING, State.FAILED)]
        for text in plan.footer(matrix, todo):
            print(text)


class Reporter:
    """Says when a run ends; a failure comes with the tail of its log, and the others carry on."""

    def __init__(self, matrix: list[RunSpec], runs_dir: Path, log_lines: int) -> None:
        self.rows = {spec.run_dir(runs_dir): spec.row_labels() for spec in matrix}
        self.log_lines = log_lines
        self.failed: list[RunStatus] = []

    def __call__(self, status: RunStatus) -> None:
        rows = self.rows.get(status.run_dir, "")
        if status.state is State.FAILED:
            self.failed.append(status)
            tqdm.write(f"[failed] {status.run_dir.name} ({rows})\n{failure_report(status, self.log_lines)}",
                       file=sys.stderr)
        elif status.in_flight:
            tqdm.write(f"[{status.state.value}] {status.run_dir.name} ({rows}): {status.detail}", file=sys.stderr)
        else:
            detail = f": {status.detail}" if status.detail else ""
            tqdm.write(f"[{status.state.value}] {status.run_dir.name} ({rows}){detail}", file=sys.stderr)


def gather_matrix(matrix: list[RunSpec], runs_dir: Path):
    """The finished runs of this matrix only (not every run under the runs folder) as a DataFrame."""
    import pandas as pd

    from analysis.gather import BASE_COLUMNS, gather_runs

    frames = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in matrix:
            run_dir = spec.run_dir(runs_dir)
            if RunDir(run_dir).result_file.exists():
                frames.append(gather_runs(run_dir))
    if not frames:
        return pd.DataFrame(columns=list(BASE_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def print_tables(tables: list[str], matrix: list[RunSpec], runs_dir: Path, scale: str, out: Path) -> None:
    from analysis.figure1 import build_figure1
    from analysis.tables import build_table

    runs_df = gather_matrix(matrix, runs_dir)
    for name in tables:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if name == "figure1":
                figure = build_figure1(runs_df, scale)
                text = figure.to_markdown()
                paths = figure.save(out / "figures" / f"figure1_{scale}.png")
            else:
                table = build_table(name, runs_df, scale)
                text = table.to_markdown()
                paths = table.write(out / "tables")
        print(text)
        for warning in caught:
            print(f"note: {warning.message}", file=sys.stderr)
        print(f"wrote {', '.join(str(p) for p in paths)}\n")
