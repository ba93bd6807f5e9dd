"""When a difference between two rows is within what the seeds already disagree about.

The paper's claims are differences of 0.2-1.4 AP between rows, and a smoke run of one seed can move by
several points on another machine. So every rebuilt table marks the differences its seeds cannot tell
from noise, by one rule stated in each caption (`RULE`):

    a difference lies within the seeds' spread when |mean(a) - mean(b)| <= max(std(a), std(b)),

with std the sample standard deviation over a row's seeds (n - 1 in the denominator). It is a plain
one-sigma screen, not a significance test: a marked difference is one the seeds could produce alone; an
unmarked one is merely larger than each row's own scatter. A row with a single seed has no spread, and
its differences are left unmarked with the caption saying so (`spread_note`), never silently.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

MARK = "≈"
RULE = "|mean difference| <= the larger of the two rows' sample standard deviations (n-1) over seeds"


def mean_std(values: Iterable[float]) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None below two values, count) of the finite values."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return None, None, 0
    std = float(np.std(finite, ddof=1)) if finite.size > 1 else None
    return float(finite.mean()), std, int(finite.size)


def within_spread(difference: float | None, std_a: float | None, std_b: float | None) -> bool | None:
    """True: the difference could be the seeds' noise; False: it is larger than both rows' spread;
    None: it cannot be judged (no difference, or a row with a single seed)."""
    if difference is None or std_a is None or std_b is None:
        return None
    return abs(difference) <= max(std_a, std_b)


def spread_note(judged: int, unjudged: int) -> str:
    """The caption's sentence on marking, given how many differences could and could not be judged."""
    marking = f"{MARK}: the difference lies within the seeds' spread ({RULE})."
    if judged == 0 and unjudged == 0:
        return ""
    if judged == 0:
        return "Single seed: no spread, so no difference is marked as within or beyond noise."
    if unjudged:
        return marking + " Differences involving a row with a single seed have no spread and are not marked."
    return marking
