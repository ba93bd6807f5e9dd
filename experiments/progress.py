"""How far a training run has got, read from the end of its metrics.jsonl: for `--status`.

The run folder is all it needs, so it answers the same for a local run and for a SLURM job (whose
folder is on the shared file system): iteration of the total, the latest loss, the ETA and the time
since the run last wrote a record.

Possibly stalled, the rule: a run writes a metrics row every `schedule.log_every` iterations, so
the gap between records should be about log_every x its seconds per iteration (the slowest of its
last `RECENT_ROWS` rows, data loading included). A run that has written nothing (no metrics row,
log line or, from `experiments.status`, attempt record: a requeued SLURM job rewrites it when it
starts) for more than `STALL_INTERVALS` such gaps, and for at least `STALL_FLOOR_S` (checkpoint saves
and the workers' start at each epoch pause the records for a while), is flagged as possibly stalled.
A run whose training is done is evaluating, which logs nothing until it ends: it is never flagged,
nor is one that has not written its first row yet.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from scnet.engine.run_log import MetricsLineWarning, read_metrics
from scnet.records.files import RecordError
from scnet.records.run_dir import RunDir, read_config

RECENT_ROWS = 3
STALL_INTERVALS = 3
STALL_FLOOR_S = 120.0


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '3h 05m', '2d 04h': as precise as a person watching needs."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours, mins = divmod(int(minutes), 60)
    if hours < 48:
        return f"{hours}h {mins:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


@dataclass(frozen=True)
class Progress:
    """A training run's position as of its latest metrics row, and how long it has been silent."""

    iteration: int
    total: int | None  # None: rows written before the trainer logged the total
    loss: float | None
    eta_s: float | None  # remaining training time now: the row's estimate less the time since it
    s_per_iter: float | None
    log_every: int | None
    silent_s: float  # since the run last wrote one of its files that show it alive

    @property
    def training_done(self) -> bool:
        return self.total is not None and self.iteration >= self.total

    @property
    def stall_after_s(self) -> float | None:
        """Silence beyond which the run is flagged (None: not enough known to judge)."""
        if self.training_done or self.s_per_iter is None or self.log_every is None:
            return None
        return max(STALL_INTERVALS * self.log_every * self.s_per_iter, STALL_FLOOR_S)

    @property
    def possibly_stalled(self) -> bool:
        limit = self.stall_after_s
        return limit is not None and self.silent_s > limit

    def describe(self) -> str:
        """One line: 'iteration 60/160 (38%), loss 2.31, ETA 52 s, last record 3 s ago'."""
        if self.total:
            parts = [f"iteration {self.iteration}/{self.total} ({100 * self.iteration / self.total:.0f}%)"]
        else:
            parts = [f"iteration {self.iteration}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.training_done:
            parts.append("training done, evaluating")
        elif self.eta_s is not None and not self.possibly_stalled:  # a stalled run's ETA means nothing
            parts.append(f"ETA {format_duration(self.eta_s)}")
        line = ", ".join(parts) + f", last record {format_duration(self.silent_s)} ago"
        if self.possibly_stalled:
            line += (f": POSSIBLY STALLED (silent for more than {STALL_INTERVALS} log intervals of "
                     f"{self.log_every} iterations at {self.s_per_iter:.3g} s/it, and over "
                     f"{format_duration(STALL_FLOOR_S)})")
        return line


def _age_s(path: Path, now: float) -> float | None:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return None


def _log_every(run_dir: Path, rows: list[dict]) -> int | None:
    try:
        value = read_config(run_dir).get("schedule", {}).get("log_every")
    except (RecordError, AttributeError):
        value = None
    if isinstance(value, int) and value > 0:
        return value
    gaps = [b["iter"] - a["iter"] for a, b in zip(rows, rows[1:]) if b["iter"] > a["iter"]]
    return max(gaps) if gaps else None


def _number(row: dict, key: str) -> float | None:
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_progress(run_dir: str | Path, *, now: float | None = None,
                  signs_of_life: Sequence[str] = (RunDir.METRICS, RunDir.LOG)) -> Progress | None:
    """The run's progress (None before its first metrics row); a cut last line is skipped quietly.
    `signs_of_life`: the run's files whose last change shows it alive."""
    run_dir = Path(run_dir)
    now = time.time() if now is None else now
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricsLineWarning)  # a row being appended right now
        rows = read_metrics(run_dir, last=RECENT_ROWS + 1)
    if not rows:
        return None
    latest = rows[-1]
    record_age = _age_s(RunDir(run_dir).metrics_file, now) or 0.0
    ages = [age for age in (_age_s(run_dir / name, now) for name in signs_of_life) if age is not None]
    speeds = [(_number(row, "time") or 0.0) + (_number(row, "data_time") or 0.0) for row in rows[-RECENT_ROWS:]]
    eta = _number(latest, "eta_s")
    total = latest.get("total_iters")
    return Progress(
        iteration=int(latest["iter"]),
        total=int(total) if isinstance(total, int) else None,
        loss=_number(latest, "loss"),
        eta_s=None if eta is None else max(0.0, eta - record_age),
        s_per_iter=max(speeds) if any(speeds) else None,
        log_every=_log_every(run_dir, rows),
        silent_s=max(0.0, min(ages, default=record_age)),
    )


def describe_progress(run_dir: str | Path, *, now: float | None = None,
                      signs_of_life: Sequence[str] = (RunDir.METRICS, RunDir.LOG)) -> str:
    progress = read_progress(run_dir, now=now, signs_of_life=signs_of_life)
    return progress.describe() if progress is not None else "no metrics row yet (starting)"
