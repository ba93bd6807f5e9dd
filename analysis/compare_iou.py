"""Compare recorded IoU distributions of two or more runs, or of stages within runs.

    python -m analysis.compare_iou RUN_A RUN_B:train/stage2 RUN_C:inference [--out plot.png]

A spec is a run directory, optionally followed by `:TAG` (a tag or prefix such as `train/`); without
a tag all training stages (`train/`) are used, or `inference` when the run recorded no training.
Prints Markdown: shares at or below 0.5 ... 0.95 and the mean per spec, then the Wasserstein
distance and the Kolmogorov-Smirnov statistic for each pair; writes an overlaid plot.
"""
from __future__ import annotations

import argparse
import io
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.iou import SHARE_THRESHOLDS, IoUDistribution, ks_statistic, wasserstein  # noqa: E402
from scnet.records.files import RecordError, write_bytes_atomic  # noqa: E402
from scnet.records.iou import IoURecords  # noqa: E402


@dataclass(frozen=True)
class IoUSpec:
    run_dir: Path
    tags: str | None  # None: the default (train/, else inference)

    @classmethod
    def parse(cls, text: str) -> "IoUSpec":
        """`RUN_DIR` or `RUN_DIR:TAG`; a path that exists as given is never split at a colon."""
        if Path(text).exists() or ":" not in text:
            return cls(Path(text), None)
        run_dir, tags = text.rsplit(":", 1)
        if not tags:
            raise ValueError(f"{text!r}: empty tag after ':'; write RUN_DIR or RUN_DIR:TAG (e.g. RUN_DIR:train/stage2)")
        return cls(Path(run_dir), tags)

    def load(self) -> IoUDistribution:
        records = IoURecords.load(self.run_dir)
        tags = self.tags or _default_tags(records)
        return IoUDistribution.from_records(records, tags, f"{self.run_dir.name}:{tags}")


def _default_tags(records: IoURecords) -> str:
    if any(t.startswith("train/") for t in records.tags):
        return "train/"
    if "inference" in records.tags:
        return "inference"
    raise RecordError(f"{records.source}: no train/ or inference tags (recorded: {records.tags}); give RUN_DIR:TAG")


def shares_table(dists: Sequence[IoUDistribution], thresholds: Sequence[float] = SHARE_THRESHOLDS) -> pd.DataFrame:
    """Per distribution: samples, mean IoU, and percent at or below each threshold."""
    records = []
    for dist in dists:
        record = {"spec": dist.label, "samples": dist.n, "mean_iou": dist.mean}
        for t in thresholds:
            record[f"le_{t:g}"] = 100.0 * dist.share_at_or_below(t)
        records.append(record)
    return pd.DataFrame.from_records(records)


def distances_table(dists: Sequence[IoUDistribution]) -> pd.DataFrame:
    """Wasserstein-1 distance and KS statistic for every pair (in the order given)."""
    records = [{"a": a.label, "b": b.label, "wasserstein": wasserstein(a, b), "ks": ks_statistic(a, b)}
               for a, b in itertools.combinations(dists, 2)]
    return pd.DataFrame.from_records(records, columns=["a", "b", "wasserstein", "ks"])


def _markdown(frame: pd.DataFrame, digits: dict[str, int]) -> str:
    head = list(frame.columns)
    labels = [f"<= {c[3:]} (%)" if c.startswith("le_") else c for c in head]
    align = ["---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in head]
    lines = ["| " + " | ".join(labels) + " |", "|" + "|".join(align) + "|"]
    for record in frame.itertuples(index=False):
        cells = []
        for column, value in zip(head, record):
            if isinstance(value, float):
                cells.append(f"{value:.{digits.get(column, 1)}f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(dists: Sequence[IoUDistribution]) -> str:
    shares = shares_table(dists)
    distances = distances_table(dists)
    return ("**IoU shares (% of samples at or below each threshold)**\n\n"
            + _markdown(shares, {"mean_iou": 3})
            + "\n**Pairwise distances (Wasserstein-1 in IoU units; Kolmogorov-Smirnov statistic)**\n\n"
            + _markdown(distances, {"wasserstein": 4, "ks": 4}))


def plot(dists: Sequence[IoUDistribution], bins: int = 50) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    edges = np.linspace(0.0, 1.0, bins + 1)
    for dist in dists:
        heights = 100.0 * dist.rebinned(bins) / max(dist.n, 1)
        ax.stairs(heights, edges, label=f"{dist.label} (n={dist.n}, mean={dist.mean:.3f})", linewidth=1.4)
    for t in (0.5, 0.75):
        ax.axvline(t, color="red", linestyle="--", linewidth=0.7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU with assigned ground truth")
    ax.set_ylabel("samples (%)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def save_plot(dists: Sequence[IoUDistribution], out: str | Path) -> Path:
    out = Path(out)
    fig = plot(dists)
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=out.suffix[1:] or "png", dpi=150)
    finally:
        plt.close(fig)
    return write_bytes_atomic(out, buffer.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.compare_iou", description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", metavar="RUN_DIR[:TAG]")
    parser.add_argument("--out", default="results/figures/compare_iou.png", help="overlaid plot (.png or .pdf)")
    args = parser.parse_args(argv)
    if len(args.specs) < 2:
        parser.error("give at least two runs (or RUN_DIR:TAG stages) to compare")
    try:
        dists = [IoUSpec.parse(text).load() for text in args.specs]
        text = report(dists)
    except (RecordError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    print(f"wrote {save_plot(dists, args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
