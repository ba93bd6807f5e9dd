"""IoU distributions from recorded bin counts: shares, means, and distances between two of them.

Everything here works on the fine-binned counts (the whole stream of a run, not the bounded
sample), so shares are exact at bin edges and the distances are exact up to one bin width
(1/1000 by default).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import stats

from scnet.records.files import RecordError
from scnet.records.iou import IoURecords, share_at_or_below_counts

SHARE_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


@dataclass(frozen=True)
class IoUDistribution:
    """Counts over right-closed bins of [0, 1] plus the exact running total (for the mean)."""

    label: str
    counts: np.ndarray
    total: float

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def bins(self) -> int:
        return int(self.counts.size)

    @property
    def mean(self) -> float:
        return float("nan") if self.n == 0 else self.total / self.n

    def share_at_or_below(self, threshold: float) -> float:
        return share_at_or_below_counts(self.counts, threshold)

    def rebinned(self, bins: int) -> np.ndarray:
        """Counts over `bins` coarser bins (must divide the recorded bin count), for plotting."""
        if self.bins % bins:
            raise ValueError(f"cannot rebin {self.bins} bins into {bins}; choose a divisor of {self.bins}")
        return self.counts.reshape(bins, -1).sum(axis=1)

    @classmethod
    def from_records(cls, records: IoURecords, tags: str, label: str | None = None) -> "IoUDistribution":
        counts = records.counts(tags).astype(np.int64)
        n = int(counts.sum())
        total = records.mean(tags) * n if n else 0.0
        return cls(label or tags, counts, total)

    @classmethod
    def combine(cls, label: str, parts: Sequence["IoUDistribution"]) -> "IoUDistribution":
        """Pool several runs (e.g. seeds) into one distribution."""
        if not parts:
            raise ValueError(f"{label}: nothing to combine")
        sizes = {p.bins for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"{label}: recordings with different bin counts {sorted(sizes)} cannot be pooled")
        return cls(label, np.sum([p.counts for p in parts], axis=0), float(sum(p.total for p in parts)))


def load_distribution(run_dir: str | os.PathLike, tags: str, label: str | None = None) -> IoUDistribution:
    records = IoURecords.load(run_dir)
    return IoUDistribution.from_records(records, tags, label or f"{Path(run_dir).name}:{tags}")


def _centres(bins: int) -> np.ndarray:
    return (np.arange(bins) + 0.5) / bins


def wasserstein(a: IoUDistribution, b: IoUDistribution) -> float:
    """Earth mover's distance in IoU units, bins represented by their centres."""
    _check_pair(a, b)
    centres = _centres(a.bins)
    return float(stats.wasserstein_distance(centres, centres, a.counts, b.counts))


def ks_statistic(a: IoUDistribution, b: IoUDistribution) -> float:
    """Largest gap between the two CDFs, evaluated at every bin edge."""
    _check_pair(a, b)
    cdf_a = np.cumsum(a.counts) / a.n
    cdf_b = np.cumsum(b.counts) / b.n
    return float(np.max(np.abs(cdf_a - cdf_b)))


def _check_pair(a: IoUDistribution, b: IoUDistribution) -> None:
    if a.n == 0 or b.n == 0:
        empty = a.label if a.n == 0 else b.label
        raise RecordError(f"{empty}: no IoUs recorded; nothing to compare")
    if a.bins != b.bins:
        raise ValueError(f"{a.label} has {a.bins} bins and {b.label} {b.bins}; record both with the same bins")
