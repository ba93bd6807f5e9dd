"""Anchors of the RPN: one scale (8 x stride) and three aspect ratios per FPN level, centred on the
top-left corner of each feature cell (MMDetection's centre offset 0)."""
from __future__ import annotations

import torch

from scnet.models.device_constants import cached

STRIDES = (4, 8, 16, 32, 64)
RATIOS = (0.5, 1.0, 2.0)
SCALE = 8.0


def _base_anchors_cpu(stride: int) -> torch.Tensor:
    ratios = torch.tensor(RATIOS)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = stride * w_ratios * SCALE
    hs = stride * h_ratios * SCALE
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=1)


# the same as float32 numpy rows, for host-side geometry (scnet.models.rpn.RPN.any_trainable_anchor)
BASE_ANCHORS_FLOAT32 = {stride: _base_anchors_cpu(stride).numpy() for stride in STRIDES}


def base_anchors(stride: int, device: torch.device) -> torch.Tensor:
    """[len(RATIOS), 4] anchors centred on (0, 0), made once per device."""
    return cached(("base_anchors", stride), lambda: _base_anchors_cpu(stride), device, torch.float32)


def grid_anchors(feature_hw: tuple[int, int], stride: int, device: torch.device) -> torch.Tensor:
    """All anchors of one level, ordered (row, column, ratio) like the head's flattened outputs."""
    h, w = feature_hw
    shift_x = torch.arange(w, device=device, dtype=torch.float32) * stride
    shift_y = torch.arange(h, device=device, dtype=torch.float32) * stride
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack([xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)], dim=1)
    return (shifts[:, None, :] + base_anchors(stride, device)[None]).reshape(-1, 4)
