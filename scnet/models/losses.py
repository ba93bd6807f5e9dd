"""Loss functions shared by the heads, reduced the way MMDetection reduces them (sums divided by the
number of sampled boxes, not by the number of positives)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def box_regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, *, beta: float,
                        reduction: str = "sum") -> torch.Tensor:
    """Summed over boxes and coordinates (the caller divides by its sample count), or per coordinate
    with reduction="none" (for weighting fixed-size slots)."""
    if kind == "l1":
        loss = (pred - target).abs()
        return loss.sum() if reduction == "sum" else loss
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=beta, reduction=reduction)
    raise ValueError(f"unknown box loss {kind!r}; use 'l1' or 'smooth_l1'")
