"""TensorBoard event files beside metrics.jsonl, when the optional `tensorboard` package is installed.

`pip install -e '.[tensorboard]'` turns them on; rank 0 then writes, into the run folder, every
metrics.jsonl row as scalars `train/<field>` at step `iter`, and the final COCO metrics as
`<eval split>/<bbox|segm>_<AP..>` at the last iteration, so `tensorboard --logdir results/runs` shows
every run side by side (named by run id; `python -m experiments.run NAME --dry-run` maps ids to rows).
Without the package nothing changes and nothing of it is imported: `torch.utils.tensorboard` imports
it, so that import happens only here, and only after `importlib.util.find_spec` found it.

A resumed run purges from TensorBoard's view the events its earlier attempt wrote after the
checkpoint, as metrics.jsonl is cut back (`SummaryWriter(purge_step=...)`).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from scnet.records.result import METRIC_KINDS, METRIC_NAMES

# Row fields that are not curves: the step itself and constants of the run.
NOT_SCALARS = ("iter", "total_iters", "iters_per_epoch")
# Seconds between flushes to disk: a live run's curves are at most this late in TensorBoard.
FLUSH_S = 30


def tensorboard_installed() -> bool:
    try:
        return importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):  # a broken or stubbed-out package counts as absent
        return False


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TensorBoardLog:
    """One SummaryWriter on the run folder; a `ScalarSink` for `scnet.engine.run_log.RunLog`."""

    def __init__(self, run_dir: str | os.PathLike, *, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step, flush_secs=FLUSH_S)

    def add_row(self, row: dict[str, Any]) -> None:
        step = int(row["iter"])
        for name, value in row.items():
            if name not in NOT_SCALARS and _number(value):
                self.writer.add_scalar(f"train/{name}", value, step)

    def add_result(self, result: dict[str, Any]) -> None:
        """The final COCO metrics of a result.json, at its last training iteration."""
        split = (result.get("eval") or {}).get("split") or "eval"
        step = int(result.get("timing", {}).get("iterations") or 0)
        for kind in METRIC_KINDS:
            for name in METRIC_NAMES:
                value = result["metrics"][kind].get(name)
                if _number(value):
                    self.writer.add_scalar(f"{split}/{kind}_{name}", value, step)

    def close(self) -> None:
        self.writer.close()


def open_tensorboard_log(run_dir: str | os.PathLike, *, resumed_at: int = 0) -> TensorBoardLog | None:
    """A writer on `run_dir` (None without the package); `resumed_at`: the checkpoint's iteration, after
    which an earlier attempt's events are hidden."""
    if not tensorboard_installed():
        return None
    return TensorBoardLog(run_dir, purge_step=resumed_at + 1 if resumed_at else None)


def write_result_scalars(run_dir: str | os.PathLike, result: dict[str, Any]) -> None:
    board = open_tensorboard_log(run_dir)
    if board is not None:
        try:
            board.add_result(result)
        finally:
            board.close()
