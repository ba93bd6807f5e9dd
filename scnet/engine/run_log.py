"""The run's logs: metrics.jsonl (one JSON object per logged iteration) and log.txt (for people).

Only rank 0 writes. On resume the metrics log is cut back to the checkpoint's iteration (rewritten
atomically), so an interrupted-and-resumed run leaves the same metrics.jsonl rows as an unbroken one.
Each row may also go to a scalar sink (TensorBoard event files, `scnet.engine.tensorboard_log`).

Readers (curves, `--status`) read metrics.jsonl while the run appends to it, and a killed run can
leave its last line cut short: such a line is skipped with a `MetricsLineWarning`, never raised.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

from scnet.records.files import atomic_write
from scnet.records.run_dir import RunDir

# Fields of a metrics.jsonl row that are not losses (every other number is a loss term, "loss" their sum).
ROW_FIELDS = ("iter", "epoch", "lr", "time", "data_time", "eta_s", "memory_mb", "total_iters", "iters_per_epoch")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLineWarning(UserWarning):
    """A metrics.jsonl line that is not a JSON row (cut short by a kill, or still being written)."""


class ScalarSink(Protocol):
    """Somewhere else the metrics rows go (TensorBoard); `close` flushes it."""

    def add_row(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class RunLog:
    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = RunDir(run_dir).metrics_file
        self.log_path = RunDir(run_dir).log_file
        self.sink: ScalarSink | None = None

    def attach_sink(self, sink: ScalarSink | None) -> None:
        """Send every later metrics row to `sink` too; `close` closes it."""
        self.sink = sink

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()
            self.sink = None

    def truncate_after(self, iteration: int) -> None:
        """Drop metrics rows logged after `iteration` (they came from work the checkpoint does not hold)."""
        if not self.enabled or not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            row = _parse_row(line)  # None: a line cut by the kill
            if row is not None and row["iter"] <= iteration:
                kept.append(line)
        text = "".join(f"{line}\n" for line in kept).encode("utf-8")
        atomic_write(self.metrics_path, lambda handle: handle.write(text))

    def metrics(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({k: _finite(v) for k, v in row.items()}, sort_keys=True)
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
        if self.sink is not None:
            self.sink.add_row(row)

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {message}\n")


# Bytes read from the end of metrics.jsonl per requested row when only the last rows are wanted.
_TAIL_BYTES_PER_ROW = 2048


def _parse_row(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(row, dict) or not isinstance(row.get("iter"), int) or isinstance(row["iter"], bool):
        return None
    return row


def _tail_lines(path: Path, rows: int) -> list[str]:
    """The last `rows` lines (fewer if the file is short); reads only the end of a big file."""
    want = max(rows, 1) * _TAIL_BYTES_PER_ROW
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = max(0, size - want)
        handle.seek(start)
        data = handle.read()
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first line read is most likely a tail of a line
    return lines[-rows:]


def read_metrics(run_dir: str | os.PathLike, *, last: int | None = None) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl ([] if there is none); `last`: only the last rows, read from the
    file's end (for status on long runs). Lines that are not a JSON object with an integer "iter" (a
    line cut by a kill, or being appended right now) are skipped with one `MetricsLineWarning`."""
    path = RunDir(run_dir).metrics_file
    try:
        lines = _tail_lines(path, last) if last is not None else path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    rows, bad = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = _parse_row(line)
        if row is None:
            bad.append(number)
        else:
            rows.append(row)
    if bad:
        where = f"line(s) {', '.join(map(str, bad[:5]))}" if last is None else f"{len(bad)} of its last lines"
        warnings.warn(f"{path}: skipped {where} that are not a metrics row (cut short by a killed run, or being "
                      "written now)", MetricsLineWarning, stacklevel=2)
    return rows
