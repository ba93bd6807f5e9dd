"""One rank of a two-process (gloo) run for tests/test_engine_failfast.py, with a fault injected.

    python -m tests.engine_rank_worker MODE RUN_DIR

RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT come from the environment. MODE:
- `dataset-error`: rank 1's dataset raises on its 3rd sample;
- `nan-loss`: rank 1's model returns a NaN loss at its 3rd forward;
- `stop`: rank 1 alone is asked to stop (as by USR2) while loading its 3rd sample;
- `hang`: rank 1 hangs (sleeps) while loading its 3rd sample, as a rank stuck in I/O would;
- `slow-start`: rank 1 starts SLOW_START_S late and takes as long again to build its training set
  (imports from a busy filesystem, parsing train2017), each longer than the collective timeout;
- `ok`: no fault (a normal run with evaluation).
Exit status: 0 when the run finished, 3 on TrainingInterrupted, 1 on any other exception (its type
and message printed as 'FAILED <type>: <message>').
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from scnet.engine import preemption, runner
from scnet.engine.run_config import RunConfig
from scnet.records.run_dir import read_config

FAULT_AT = 3
SLOW_START_S = 8.0


class _FaultyDataset:
    """Delegates to the real dataset; on rank 1 injects the fault at the FAULT_AT-th sample."""

    def __init__(self, inner: Any, mode: str) -> None:
        self.inner, self.mode, self.calls = inner, mode, 0

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __getitem__(self, index: Any) -> Any:
        self.calls += 1
        if os.environ["RANK"] == "1" and self.calls == FAULT_AT:
            if self.mode == "dataset-error":
                raise OSError(f"injected: cannot read image {index}")
            if self.mode == "stop":
                preemption.request_stop("injected stop request")
            if self.mode == "hang":
                time.sleep(3600)
        return self.inner[index]


def _nan_on_third_forward(model: torch.nn.Module) -> torch.nn.Module:
    original = model.forward
    calls = [0]

    def forward(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        if model.training:
            calls[0] += 1
            if calls[0] == FAULT_AT:
                out = {name: value * float("nan") for name, value in out.items()}
        return out

    model.forward = forward  # type: ignore[method-assign]
    return model


def main(mode: str, run_dir: Path) -> int:
    torch.set_num_threads(1)
    build_dataset, build_model = runner.build_dataset, runner.build_run_model

    def faulty_dataset(run_config: RunConfig, split: str, *, train: bool) -> Any:
        if mode == "slow-start" and train and os.environ["RANK"] == "1":
            time.sleep(SLOW_START_S)
        dataset = build_dataset(run_config, split, train=train)
        return _FaultyDataset(dataset, mode) if train else dataset

    def faulty_model(run_config: RunConfig, dataset: Any) -> torch.nn.Module:
        model = build_model(run_config, dataset)
        return _nan_on_third_forward(model) if mode == "nan-loss" and os.environ["RANK"] == "1" else model

    runner.build_dataset, runner.build_run_model = faulty_dataset, faulty_model
    if mode == "slow-start" and os.environ["RANK"] == "1":
        time.sleep(SLOW_START_S)  # rank 0 waits in the rendezvous meanwhile
    try:
        runner.run_training(RunConfig.from_dict(read_config(run_dir)), run_dir, progress=False, device="cpu")
    except preemption.TrainingInterrupted as exc:
        print(f"INTERRUPTED at {exc.iteration}", flush=True)
        return 3
    except Exception as exc:
        print(f"FAILED {type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
