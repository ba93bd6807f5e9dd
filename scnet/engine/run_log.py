"""The run's logs: metrics.jsonl (one JSON object per logged iteration) and log.txt (for people).

Only rank 0 writes. On resume the metrics log is cut back to the checkpoint's iteration (rewritten
atomically), so an interrupted-and-resumed run leaves the same metrics.jsonl rows as an unbroken one.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from scnet.engine.atomic import atomic_write

METRICS_FILE = "metrics.jsonl"
LOG_FILE = "log.txt"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLog:
    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = self.run_dir / METRICS_FILE
        self.log_path = self.run_dir / LOG_FILE

    def truncate_after(self, iteration: int) -> None:
        """Drop metrics rows logged after `iteration` (they came from work the checkpoint does not hold)."""
        if not self.enabled or not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if isinstance(row, dict) and int(row.get("iter", 0)) <= iteration:
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

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {message}\n")


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
