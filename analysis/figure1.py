"""Figure 1 of the paper from recorded IoUs: training without / with sample consistency, and inference.

    python -m analysis.figure1 --runs results/runs --out results/figures/figure1.png [--scale smoke]

Writes the PNG, a PDF beside it, and the shares as CSV and Markdown (`figure1_shares.*`), with the
paper's percentages next to ours. Panels come from the runs that match `experiments.tables`'
Figure 1 rows. Several seeds of a row are pooled for the histograms, and each share is also given as
mean ± std over the seeds' own shares, so the ordering of the panels can be read against the noise
(`analysis.spread`: two panels whose shares differ by no more than the larger std are marked).
"""
from __future__ import annotations

import argparse
import io
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.figure_files import save_figure  # noqa: E402
from analysis.gather import SkippedRunWarning  # noqa: E402
from analysis.iou import IoUDistribution  # noqa: E402
from analysis.paper import paper_lookup  # noqa: E402
from analysis.spread import MARK, RULE, mean_std, within_spread  # noqa: E402
from analysis.tables import infer_scale, runs_for  # noqa: E402
from experiments.tables import TABLE_NOTES, rows_of  # noqa: E402
from scnet.engine.run_config import SCALES  # noqa: E402
from scnet.records.files import RecordError, write_text_atomic  # noqa: E402
from scnet.records.iou import IoURecords  # noqa: E402

THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
PAPER_THRESHOLD = 0.75
PLOT_BINS = 50
PANEL_TITLES = {
    "training w/o SC": "(a) Training w/o sample consistency",
    "training w/ SC": "(b) Training w/ sample consistency",
    "inference": "(c) Inference",
}


@dataclass(frozen=True)
class Figure1Panel:
    label: str
    tags: str
    distribution: IoUDistribution | None  # all seeds pooled
    run_dirs: tuple[str, ...]
    paper_share: float | None  # percent at IoU <= 0.75, as the paper states it
    per_run: tuple[IoUDistribution, ...] = ()  # one per run (seed), in run_dirs' order

    def share(self, threshold: float) -> float | None:
        """Percent of the pooled samples at or below `threshold`; None when there is no recording."""
        if self.distribution is None or self.distribution.n == 0:
            return None
        return 100.0 * self.distribution.share_at_or_below(threshold)

    def share_over_seeds(self, threshold: float) -> tuple[float | None, float | None, int]:
        """(mean, std, runs) of the runs' own shares at or below `threshold`, in percent."""
        return mean_std(100.0 * d.share_at_or_below(threshold) for d in self.per_run if d.n)


def _panel_distributions(label: str, tags: str, run_dirs: Sequence[str]
                         ) -> tuple[IoUDistribution | None, tuple[IoUDistribution, ...], tuple[str, ...]]:
    parts, used = [], []
    for run_dir in run_dirs:
        try:
            parts.append(IoUDistribution.from_records(IoURecords.load(run_dir), tags, label))
            used.append(run_dir)
        except (RecordError, KeyError) as exc:
            warnings.warn(f"Figure 1 panel {label!r}: skipping {run_dir}: {exc}", SkippedRunWarning, stacklevel=3)
    if not parts:
        return None, (), ()
    return IoUDistribution.combine(label, parts), tuple(parts), tuple(used)


def _mean_pm_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return _fmt(mean) if std is None else f"{_fmt(mean)} ± {_fmt(std)}"


@dataclass(frozen=True)
class Figure1Result:
    scale: str
    panels: list[Figure1Panel]

    def panel(self, label: str) -> Figure1Panel:
        for panel in self.panels:
            if panel.label == label:
                return panel
        raise KeyError(f"no Figure 1 panel {label!r}; panels: {[p.label for p in self.panels]}")

    def shares_frame(self) -> pd.DataFrame:
        records = []
        for panel in self.panels:
            dist = panel.distribution
            mean, std, n = panel.share_over_seeds(PAPER_THRESHOLD)
            record = {"panel": panel.label, "tags": panel.tags, "runs": len(panel.run_dirs),
                      "samples": dist.n if dist else 0, "mean_iou": dist.mean if dist and dist.n else None,
                      "paper_share_le_0.75": panel.paper_share,
                      "seeds_mean_share_le_0.75": mean, "seeds_std_share_le_0.75": std}
            for threshold in THRESHOLDS:
                record[f"share_le_{threshold:g}"] = panel.share(threshold)
            records.append(record)
        return pd.DataFrame.from_records(records)

    def ordering(self, threshold: float = PAPER_THRESHOLD) -> str:
        """The panels ordered by share at or below `threshold`, the paper's beside ours, and for each
        neighbouring pair of ours whether the seeds' spread covers the gap (`analysis.spread`)."""
        paper = sorted((p for p in self.panels if p.paper_share is not None), key=lambda p: -p.paper_share)
        shares = {p.label: p.share_over_seeds(threshold) for p in self.panels}
        ours = sorted((p for p in self.panels if shares[p.label][0] is not None), key=lambda p: -shares[p.label][0])
        text = f"Share at IoU <= {threshold:g}, largest first: paper " + " > ".join(
            f"{p.label} ({_fmt(p.paper_share)})" for p in paper)
        if not ours:
            return text + "; ours: no recording."
        pairs = []
        for high, low in zip(ours, ours[1:]):
            (a, std_a, _), (b, std_b, _) = shares[high.label], shares[low.label]
            judged = within_spread(a - b, std_a, std_b)
            verdict = {True: f"{MARK} within the seeds' spread", False: "beyond the seeds' spread",
                       None: "no spread (single seed)"}[judged]
            pairs.append(f"{high.label} - {low.label} = {a - b:+.1f} ({verdict})")
        same = [p.label for p in ours] == [p.label for p in paper]
        return (text + "; ours " + " > ".join(f"{p.label} ({_mean_pm_std(*shares[p.label][:2])})" for p in ours)
                + f" ({'the paper' if same else 'not the paper'}'s order); " + "; ".join(pairs) + ". "
                + f"{MARK}: {RULE}.")

    def to_markdown(self) -> str:
        head = ["Panel", "Runs", "Samples", "Mean IoU", "paper <= 0.75 (%)", "ours <= 0.75 (%), mean ± std over seeds",
                *(f"pooled <= {t:g} (%)" for t in THRESHOLDS)]
        lines = [f"**Figure 1 ({self.scale} scale): share of mask-branch samples at or below each IoU threshold; "
                 "'mean ± std over seeds' from each run's own share, 'pooled' from all runs' samples together. "
                 f"Empty: no recording. {TABLE_NOTES['figure1']}**", "",
                 "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for panel in self.panels:
            dist = panel.distribution
            cells = [panel.label, str(len(panel.run_dirs)), str(dist.n) if dist else "0",
                     _fmt(dist.mean if dist and dist.n else None, 3), _fmt(panel.paper_share),
                     _mean_pm_std(*panel.share_over_seeds(PAPER_THRESHOLD)[:2]),
                     *(_fmt(panel.share(t)) for t in THRESHOLDS)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n\n" + self.ordering() + "\n"

    def plot(self) -> plt.Figure:
        fig = plt.figure(figsize=(13.5, 5.6))
        grid = fig.add_gridspec(2, 3, height_ratios=(3.2, 1.0), hspace=0.35, wspace=0.22)
        width = 1.0 / PLOT_BINS
        for i, panel in enumerate(self.panels):
            ax = fig.add_subplot(grid[0, i])
            ax.set_title(PANEL_TITLES.get(panel.label, panel.label), fontsize=10)
            ax.set_xlim(0, 1)
            ax.set_xlabel("IoU with assigned ground truth")
            if i == 0:
                ax.set_ylabel("samples (%)")
            dist = panel.distribution
            if dist is None or dist.n == 0:
                ax.text(0.5, 0.5, "no recorded run", ha="center", va="center", transform=ax.transAxes, color="grey")
                ax.set_ylim(0, 1)
                continue
            heights = 100.0 * dist.rebinned(PLOT_BINS) / dist.n
            lefts = [k * width for k in range(PLOT_BINS)]
            ax.bar(lefts, heights, width=width, align="edge", color="#4C72B0", edgecolor="white", linewidth=0.3)
            top = max(float(heights.max()), 1e-9) * 1.25
            ax.set_ylim(0, top)
            for threshold in THRESHOLDS:
                paper_threshold = math.isclose(threshold, PAPER_THRESHOLD)
                ax.axvline(threshold, color="red", linestyle="--", linewidth=1.3 if paper_threshold else 0.7)
                ax.text(threshold - 0.008, top * 0.98, f"{panel.share(threshold):.1f}%", color="red",
                        fontsize=8 if paper_threshold else 7, fontweight="bold" if paper_threshold else "normal",
                        rotation=90, ha="right", va="top")
            ax.text(0.02, 0.97, f"n = {dist.n}\nmean = {dist.mean:.3f}", transform=ax.transAxes, fontsize=8,
                    va="top")
        table_ax = fig.add_subplot(grid[1, :])
        table_ax.axis("off")
        cell_text = [[_fmt(p.paper_share), _mean_pm_std(*p.share_over_seeds(PAPER_THRESHOLD)[:2]),
                      str(len(p.run_dirs))] for p in self.panels]
        table = table_ax.table(cellText=cell_text, rowLabels=[p.label for p in self.panels],
                               colLabels=["paper: IoU <= 0.75 (%)",
                                          f"ours ({self.scale}): IoU <= 0.75 (%), mean ± std over seeds", "runs"],
                               loc="center", cellLoc="center", colWidths=[0.2, 0.3, 0.08])
        table.scale(1, 1.2)
        fig.suptitle(f"IoU distribution of mask-branch samples ({self.scale} scale; histograms pool the seeds; red: "
                     "share at or below each dashed threshold)", fontsize=11)
        return fig

    def save(self, out_png: str | os.PathLike) -> list[Path]:
        """Write PNG + PDF (same stem) and `figure1_shares.csv/.md` beside them, all atomically."""
        out_png = Path(out_png)
        if out_png.suffix.lower() != ".png":
            raise ValueError(f"--out {out_png}: give a .png path; the PDF is written beside it")
        paths = save_figure(self.plot(), (out_png, out_png.with_suffix(".pdf")))
        stem = out_png.with_name(f"{out_png.stem}_shares")
        csv = io.StringIO()
        self.shares_frame().to_csv(csv, index=False, na_rep="", float_format="%.4g", lineterminator="\n")
        paths.append(write_text_atomic(stem.with_suffix(".csv"), csv.getvalue()))
        paths.append(write_text_atomic(stem.with_suffix(".md"), self.to_markdown()))
        return paths


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def build_figure1(runs_df: pd.DataFrame, scale: str, paper: dict | None = None) -> Figure1Result:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; use one of {SCALES}")
    paper = paper_lookup() if paper is None else paper
    panels = []
    for row in rows_of("figure1"):
        runs = runs_for(row, runs_df, scale)
        dist, per_run, used = _panel_distributions(row.label, row.iou_tags or "", list(runs["run_dir"]))
        panels.append(Figure1Panel(row.label, row.iou_tags or "", dist, used,
                                   paper.get(("figure1", row.label, row.backbone, "share_le_0.75")), per_run))
    return Figure1Result(scale, panels)


def main(argv: Sequence[str] | None = None) -> int:
    from analysis.gather import gather_runs

    parser = argparse.ArgumentParser(prog="python -m analysis.figure1", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="results/runs", help="folder searched for result.json files")
    parser.add_argument("--out", default="results/figures/figure1.png", help="PNG path (PDF written beside it)")
    parser.add_argument("--scale", choices=SCALES, help="scale to plot (default: the one the runs have)")
    args = parser.parse_args(argv)
    try:
        runs_df = gather_runs(args.runs)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    scale = args.scale or infer_scale(runs_df, args.runs)
    result = build_figure1(runs_df, scale)
    sys.stdout.write(result.to_markdown())
    for path in result.save(args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
