"""In-process executor: one run after another inside the harness, for debugging (breakpoints work)."""
from __future__ import annotations

import traceback
from pathlib import Path

from experiments.executors.base import Executor, OnEnd, claim_run, train_in_this_process
from experiments.status import run_status, write_attempt
from scnet.records.run_dir import RunDir


class InlineExecutor(Executor):
    name = "inline"
    supports_no_wait = False

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def execute(self, run_dirs: list[Path], *, wait: bool, on_end: OnEnd) -> None:
        for run_dir in run_dirs:
            lock = claim_run(run_dir, on_end)
            if lock is None:
                continue
            try:
                write_attempt(run_dir, "started", self.name)
                try:
                    train_in_this_process(run_dir, progress=self.progress)
                except Exception as exc:  # a failed run must not stop the others
                    text = traceback.format_exc()
                    with open(RunDir(run_dir).log_file, "a", encoding="utf-8") as log:
                        log.write(text)
                    write_attempt(run_dir, "failed", self.name, error=f"{type(exc).__name__}: {exc}")
                else:
                    write_attempt(run_dir, "finished", self.name)
            finally:
                lock.release()
            on_end(run_status(run_dir))
