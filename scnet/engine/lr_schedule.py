"""Learning rate as a pure function of the iteration: linear warm-up, then /10 at each step.

Because the rate depends on nothing but the iteration, resuming needs no scheduler object: the
iteration stored in the checkpoint is the scheduler's whole state.
"""
from __future__ import annotations

import torch

from scnet.engine.run_config import Schedule


def learning_rate(iteration: int, schedule: Schedule, iters_per_epoch: int) -> float:
    """The rate used for (0-based) `iteration`; warm-up as MMDetection's LinearLR (start factor = ratio)."""
    decays = sum(1 for step in schedule.step_iters(iters_per_epoch) if iteration >= step)
    lr = schedule.lr * (0.1 ** decays)
    if iteration < schedule.warmup_iters:
        progress = iteration / schedule.warmup_iters
        lr *= schedule.warmup_ratio + (1.0 - schedule.warmup_ratio) * progress
    return lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
