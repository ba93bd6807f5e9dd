"""Training curves of runs, overlaid: the total loss and each loss term, the learning rate and the
seconds per iteration against the iteration, read from each run's metrics.jsonl.

    python -m analysis.curves results/runs/3fa2b1c0d9e8 results/runs/9c41d0e2aa17 --out curves.png
    python -m analysis.curves table2 --runs results/runs --out results/figures/table2_curves.png

A table name plots the runs of its rows that exist under --runs, finished or still training (it
starts nothing), and says which rows have no run yet; runs are labelled with their table rows.
Each curve is a moving average over `--smooth` logged rows (default: about 1/25 of the longest
run) drawn over its raw values (faint); a panel whose values span more than a decade is drawn on a
log scale; the iterations at which the learning rate is divided by 10 are marked (dashed) from each
run's schedule in its config.json, not guessed from the curve. A run still training is drawn up to
its latest row. Writes the PNG and a PDF beside it.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.figure_files import save_figure  # noqa: E402
from analysis.gather import SkippedRunWarning, find_run_files  # noqa: E402
from analysis.matching import rows_for_model  # noqa: E402
from experiments.tables import TABLES, RowSpec, rows_of  # noqa: E402
from scnet.config import ConfigError  # noqa: E402
from scnet.engine.cli_args import EXIT_USAGE  # noqa: E402
from scnet.engine.run_config import SCALES, RunConfig  # noqa: E402
from scnet.engine.run_log import ROW_FIELDS, read_metrics  # noqa: E402
from scnet.records.files import OutputError, RecordError, check_writable_dir, read_json  # noqa: E402
from scnet.records.run_dir import RunDir  # noqa: E402

# A panel is drawn on a log scale when its largest value is more than this times its smallest.
LOG_SPAN = 10.0
PANELS_PER_ROW = 4
# Row labels shown per run in the legend (a smoke network can be a row of several tables).
LABELS_SHOWN = 2
LR, SPEED = "lr", "s_per_iter"
PANEL_TITLES = {"loss": "loss (total)", LR: "learning rate", SPEED: "seconds per iteration (with data)"}


class CurvesError(Exception):
    """Input that cannot be plotted; the CLI prints it on one line and exits with status 2."""


@dataclass(frozen=True)
class RunCurves:
    """One run's logged rows as curves. `frame`: a row per metrics.jsonl record indexed by iteration,
    with the loss terms, `lr` and `s_per_iter` (time + data_time) as columns."""

    label: str
    run_dir: Path
    frame: pd.DataFrame
    loss_terms: tuple[str, ...]  # "loss" (the total) first, then each term
    lr_steps: tuple[int, ...]  # iterations at which lr is divided by 10, from the schedule
    total: int | None
    finished: bool

    @property
    def last_iteration(self) -> int:
        return int(self.frame.index[-1])

    def series(self, name: str) -> pd.Series:
        return self.frame[name].dropna() if name in self.frame else pd.Series(dtype=float)

    def legend_label(self) -> str:
        if self.finished or self.total is None or self.last_iteration >= self.total:
            return self.label
        return f"{self.label} (at {self.last_iteration}/{self.total})"


def moving_average(values: pd.Series, window: int) -> pd.Series:
    """Trailing mean over `window` rows (fewer at the start), so a live run's last point is not shifted."""
    return values.rolling(window, min_periods=1).mean()


def auto_window(rows: int) -> int:
    return max(1, min(max(3, rows // 25), 50, rows))


def use_log_scale(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return bool(finite.size) and bool(np.all(finite > 0)) and finite.max() > LOG_SPAN * finite.min()


# ------------------------------------------------------------------------------------------- reading

def _run_config(run_dir: Path) -> RunConfig | None:
    try:
        return RunDir(run_dir).read_run_config()
    except (RecordError, ConfigError, TypeError, ValueError) as exc:
        warnings.warn(f"{RunDir(run_dir).config_file}: {exc}; no row label or lr steps for this run", SkippedRunWarning,
                      stacklevel=3)
        return None


def _last(frame: pd.DataFrame, column: str) -> int | None:
    values = frame[column].dropna() if column in frame else ()
    return int(values.iloc[-1]) if len(values) else None


def _iters_per_epoch(frame: pd.DataFrame, run_dir: Path) -> int | None:
    if _last(frame, "iters_per_epoch") is not None:
        return _last(frame, "iters_per_epoch")
    try:  # rows written before the trainer logged it: a finished run's result.json has it
        return int(read_json(RunDir(run_dir).result_file)["train"]["iters_per_epoch"])
    except (RecordError, KeyError, TypeError, ValueError):
        return None


def _schedule_marks(config: RunConfig | None, frame: pd.DataFrame,
                    run_dir: Path) -> tuple[tuple[int, ...], int | None]:
    """(lr step iterations, total iterations) from the run's schedule."""
    total = _last(frame, "total_iters")
    if config is None:
        return (), total
    schedule = config.schedule
    per_epoch = _iters_per_epoch(frame, run_dir)
    if schedule.epochs is not None and per_epoch is None:
        warnings.warn(f"{run_dir}: its schedule counts epochs and its rows do not say how many iterations an "
                      "epoch has; its lr steps are not marked", SkippedRunWarning, stacklevel=3)
        return (), total
    per_epoch = per_epoch or 0  # unused by a schedule counted in iterations
    return schedule.step_iters(per_epoch), total if total is not None else schedule.total_iters(per_epoch)


def _labels_text(labels: Sequence[str]) -> str:
    shown = "; ".join(labels[:LABELS_SHOWN])
    return shown + (f" (+{len(labels) - LABELS_SHOWN} more)" if len(labels) > LABELS_SHOWN else "")


def _row_label(row: RowSpec) -> str:
    """As the harness names rows: Table 1's labels repeat across backbones."""
    return f"{row.label} ({row.backbone})" if row.table == "table1" else row.label


def _all_rows_label(config: RunConfig | None) -> str | None:
    if config is None:
        return None
    rows = rows_for_model(config.model_config().to_dict(), config.scale,
                          [row for table in TABLES.values() for row in table])
    return _labels_text([f"{row.table}: {_row_label(row)}" for row in rows]) or None


def load_run_curves(run_dir: str | Path, label: str | None = None) -> RunCurves | None:
    """A run's curves (None if it has no metrics row yet); `label` defaults to the table rows it is."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        return None
    frame = pd.DataFrame(rows).apply(pd.to_numeric, errors="coerce")  # "nan"/"inf" strings become numbers
    frame = frame.drop_duplicates("iter", keep="last").sort_values("iter").set_index("iter")
    frame[SPEED] = frame.get("time", np.nan) + frame.get("data_time", 0.0)
    terms = [c for c in frame.columns if c not in ROW_FIELDS and c != SPEED and c != "loss"]
    loss_terms = tuple((["loss"] if "loss" in frame else []) + terms)
    config = _run_config(run_dir) if RunDir(run_dir).config_file.exists() else None
    lr_steps, total = _schedule_marks(config, frame, run_dir)
    if label is None:
        label = _all_rows_label(config) or run_dir.name
    return RunCurves(label, run_dir, frame, loss_terms, tuple(lr_steps), total, RunDir(run_dir).result_file.exists())


@dataclass(frozen=True)
class TableRuns:
    curves: list[RunCurves]
    scale: str
    without_run: list[str]  # row labels with no run folder yet
    without_rows: list[str]  # row labels whose runs have no metrics row yet


def table_runs(name: str, runs_root: str | Path, scale: str | None = None) -> TableRuns:
    """The runs under `runs_root` of table `name`'s rows (set up, training or finished), labelled by row."""
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        raise CurvesError(f"--runs {runs_root}: no such folder ; give the folder holding the run directories")
    table_rows = [row for row in rows_of(name) if row.run]
    matched: dict[Path, tuple[RunConfig, list[RowSpec]]] = {}
    for config_path in find_run_files(runs_root, RunDir.CONFIG):
        config = _run_config(config_path.parent)
        if config is None or (scale is not None and config.scale != scale):
            continue
        rows = rows_for_model(config.model_config().to_dict(), config.scale, table_rows)
        if rows:
            matched[config_path.parent] = (config, rows)
    scales = sorted({config.scale for config, _ in matched.values()})
    if len(scales) > 1:
        raise CurvesError(f"{name}: runs of several scales ({', '.join(scales)}) under {runs_root} ; pass --scale")
    if not matched:
        where = f" at {scale} scale" if scale else ""
        raise CurvesError(f"{name}: no run of its rows under {runs_root}{where} yet ; start them with "
                          f"'python -m experiments.run {name}' (or point --runs at their folder)")
    per_row: dict[str, list[Path]] = {}
    for run_dir, (_, rows) in matched.items():
        for row in rows:
            per_row.setdefault(_row_label(row), []).append(run_dir)
    curves, without_rows = [], []
    for run_dir, (config, rows) in sorted(matched.items(), key=lambda item: table_rows.index(item[1][1][0])):
        labels = [_row_label(row) for row in rows]
        if any(len(per_row[label]) > 1 for label in labels):
            labels = [f"{label} (seed {config.seed}, {run_dir.name})" for label in labels]
        run = load_run_curves(run_dir, _labels_text(labels))
        if run is None:
            without_rows.extend(labels)
        else:
            curves.append(run)
    without_run = [label for label in dict.fromkeys(_row_label(row) for row in table_rows) if label not in per_row]
    return TableRuns(curves, scales[0], without_run, without_rows)


# ------------------------------------------------------------------------------------------ plotting

def _panels(curves: Sequence[RunCurves]) -> list[str]:
    terms = list(dict.fromkeys(term for run in curves for term in run.loss_terms))
    return terms + [LR, SPEED]


def _mark_lr_steps(ax: plt.Axes, curves: Sequence[RunCurves], colors: Sequence[str]) -> None:
    """Dashed lines at each run's lr steps: grey where every run steps there, else in the run's colour."""
    shared = set.intersection(*(set(run.lr_steps) for run in curves)) if curves else set()
    for step in sorted(shared):
        ax.axvline(step, color="0.4", linestyle="--", linewidth=0.9, gid=f"lr_step:{step}")
    for run, color in zip(curves, colors):
        for step in run.lr_steps:
            if step not in shared:
                ax.axvline(step, color=color, linestyle="--", linewidth=0.9, alpha=0.7, gid=f"lr_step:{step}")


def plot_curves(curves: Sequence[RunCurves], *, smooth: int | None = None,
                title: str = "Training curves") -> plt.Figure:
    """One panel per loss term, lr and s/it; each run a colour. Lines carry `gid`s "PANEL:RUN:raw" and
    "PANEL:RUN:smooth" (RUN: the run's index in `curves`) so their data can be found again."""
    if not curves:
        raise CurvesError("no run with metrics to plot")
    panels = _panels(curves)
    window = smooth or auto_window(max(len(run.frame) for run in curves))
    ncols = min(PANELS_PER_ROW, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows + 0.6), squeeze=False)
    colors = [plt.get_cmap("tab10")(i % 10) for i in range(len(curves))]
    right = max(max(run.total or 0, run.last_iteration) for run in curves)
    handles = []
    for ax, panel in zip(axes.flat, panels):
        drawn = []
        for index, (run, color) in enumerate(zip(curves, colors)):
            values = run.series(panel)
            if values.empty:
                continue
            drawn.append(values.to_numpy(dtype=float))
            if panel == LR:  # exact, not noisy: no average
                ax.plot(values.index, values, color=color, linewidth=1.4, gid=f"{panel}:{index}:raw")
                continue
            ax.plot(values.index, values, color=color, alpha=0.25, linewidth=0.8, gid=f"{panel}:{index}:raw")
            line, = ax.plot(values.index, moving_average(values, window), color=color, linewidth=1.6,
                            gid=f"{panel}:{index}:smooth")
            if panel == panels[0]:
                handles.append((line, run.legend_label()))
        _mark_lr_steps(ax, curves, colors)
        if drawn and use_log_scale(np.concatenate(drawn)):
            ax.set_yscale("log")
        ax.set_title(PANEL_TITLES.get(panel, panel), fontsize=10)
        ax.set_xlim(0, right)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.suptitle(f"{title}\nmoving average of {window} logged rows over the raw values (faint)", fontsize=11,
                 y=1.0, va="bottom")
    legend = [*handles, (plt.Line2D([], [], color="0.4", linestyle="--"), "lr / 10 (schedule)")]
    fig.legend([h for h, _ in legend], [label for _, label in legend], loc="upper center",
               bbox_to_anchor=(0.5, 0.0), ncol=min(len(legend), 4), fontsize=9, frameon=False)
    return fig


def save_curves(fig: plt.Figure, out_png: str | Path) -> list[Path]:
    out_png = Path(out_png)
    return save_figure(fig, (out_png, out_png.with_suffix(".pdf")))


# ----------------------------------------------------------------------------------------------- CLI

def _gather(sources: Sequence[str], runs_root: str, scale: str | None) -> tuple[list[RunCurves], str]:
    curves: list[RunCurves] = []
    names = []
    for source in sources:
        if source in TABLES:
            found = table_runs(source, runs_root, scale)
            if found.without_run:
                print(f"{source}: no run yet for row(s): {', '.join(found.without_run)}", file=sys.stderr)
            if found.without_rows:
                print(f"{source}: no metrics row yet for: {', '.join(found.without_rows)}", file=sys.stderr)
            curves += found.curves
            names.append(f"{source} ({found.scale})")
            continue
        run_dir = Path(source)
        if not run_dir.is_dir():
            raise CurvesError(f"{source}: neither a run folder nor a table name ; give a run directory "
                              f"(holding {RunDir.METRICS}) or one of {', '.join(TABLES)}")
        if not RunDir(run_dir).metrics_file.exists() and not RunDir(run_dir).config_file.exists():
            raise CurvesError(f"{source}: no {RunDir.METRICS} or {RunDir.CONFIG} here, so not a run folder ; give "
                              f"a run directory (e.g. results/runs/<run id>) or a table name")
        run = load_run_curves(run_dir)
        if run is None:
            print(f"{source}: no metrics row yet; not plotted", file=sys.stderr)
        else:
            curves.append(run)
    if not curves:
        raise CurvesError("none of the runs has a metrics row yet ; nothing to plot")
    return curves, ", ".join(names)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.curves", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:5]))
    parser.add_argument("sources", nargs="+", metavar="RUN_DIR|TABLE",
                        help=f"run directories, or table names ({', '.join(TABLES)}) whose runs are under --runs")
    parser.add_argument("--runs", default="results/runs", help="where a table's run directories are (default "
                                                               "results/runs)")
    parser.add_argument("--scale", choices=SCALES, help="a table's runs at this scale (default: the one they have)")
    parser.add_argument("--out", default="curves.png", help="PNG path; the PDF is written beside it (default "
                                                            "curves.png)")
    parser.add_argument("--smooth", type=int, help="moving-average window in logged rows (default: automatic)")
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if Path(args.out).suffix.lower() != ".png":
                raise CurvesError(f"--out {args.out}: give a .png path ; the PDF is written beside it")
            if args.smooth is not None and args.smooth < 1:
                raise CurvesError(f"--smooth {args.smooth}: need at least 1 (1: no averaging)")
            check_writable_dir(Path(args.out).resolve().parent, "--out")
            curves, names = _gather(args.sources, args.runs, args.scale)
        except (CurvesError, OutputError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        finally:
            for warning in caught:
                print(f"warning: {warning.message}", file=sys.stderr)
    for run in curves:
        print(f"{run.legend_label()}: {run.run_dir} ({len(run.frame)} rows, up to iteration {run.last_iteration})")
    title = f"Training curves: {names}" if names else "Training curves"
    for path in save_curves(plot_curves(curves, smooth=args.smooth, title=title), args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
