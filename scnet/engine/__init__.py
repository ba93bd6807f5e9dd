"""Training, checkpoints/resume, evaluation, IoU recording: the run executor's one entry point.

```python
from scnet.engine import RunConfig, default_schedule, run_training
result = run_training(RunConfig(preset="scnet_r18_smoke", data_root="data/shapes"), Path("runs/x"))
```
`run_training` and `evaluate_run` are imported lazily so that building a `RunConfig` (which the
experiment harness does for hundreds of runs) does not pull in torch and the model.
"""
from __future__ import annotations

from typing import Any

from scnet.engine.run_config import (EvalConfig, RunConfig, Schedule, default_image_scale,
                                     default_schedule)

__all__ = ["EvalConfig", "RunConfig", "Schedule", "default_image_scale", "default_schedule",
           "run_training", "evaluate_run"]


def run_training(*args: Any, **kwargs: Any) -> dict:
    """See `scnet.engine.runner.run_training`."""
    from scnet.engine.runner import run_training as _run_training

    return _run_training(*args, **kwargs)


def evaluate_run(*args: Any, **kwargs: Any) -> dict:
    """See `scnet.engine.runner.evaluate_run`."""
    from scnet.engine.runner import evaluate_run as _evaluate_run

    return _evaluate_run(*args, **kwargs)
