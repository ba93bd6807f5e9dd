"""NMS within groups (FPN levels for the RPN, classes at test time) in one call, as mmcv's
`batched_nms` does it: every box is shifted by group x (largest coordinate + 1), so that boxes of
different groups never overlap, and one NMS runs on the shifted boxes.

mmcv shifts the boxes whatever their number (above its `split_thr` it runs one NMS per group, but on the
shifted boxes still), so this is MMDetection's arithmetic to the bit; torchvision's `batched_nms` runs
one NMS per group on the unshifted boxes above 1000 boxes, which rounds differently and costs a host
synchronisation per group (`unique`, a `nonzero` and an NMS each).
"""
from __future__ import annotations

import torch
from torchvision.ops import nms


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept, by decreasing score; boxes [N, 4], scores [N], groups [N] integers."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    offsets = groups.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)
