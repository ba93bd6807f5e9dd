"""NMS within groups (FPN levels for the RPN, classes at test time) as mmcv's `batched_nms` does it:
every box is shifted by group x (largest coordinate + 1), so that boxes of different groups never
overlap, and NMS runs on the shifted boxes.

Below `CPU_SPLIT_ABOVE` boxes, and always on a GPU, one NMS call takes them all: no host read per
group (torchvision's `batched_nms` makes one per group above 1000 boxes: a `unique`, a `nonzero` and
an NMS each). On the CPU, NMS costs time quadratic in the boxes it is given, so above mmcv's
`split_thr` (10,000: at test time 1000 RoIs x 80 classes above a 0.001 score easily pass it) the
shifted boxes are cut by group and each group gets its own call, as mmcv does; the groups cannot
suppress each other, so the kept boxes are the same and only the work differs (one NMS over 80,000
boxes took 8 of SCNet's 17 s per image on 2 cores). On a GPU the single call's suppression mask is
N^2 / 8 bytes (800 MB at 80,000 boxes); whether splitting pays there too is for a GPU to measure.
"""
from __future__ import annotations

import torch
from torchvision.ops import nms

# mmcv's batched_nms split_thr; None: never split (benchmarks/sync_points.py counts a GPU's path).
CPU_SPLIT_ABOVE: int | None = 10_000


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept, by decreasing score; boxes [N, 4], scores [N], groups [N] integers."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    offsets = groups.to(boxes) * (boxes.max() + 1)
    shifted = boxes + offsets[:, None]
    if boxes.device.type != "cpu" or CPU_SPLIT_ABOVE is None or boxes.shape[0] <= CPU_SPLIT_ABOVE:
        return nms(shifted, scores, iou_threshold)
    return _nms_group_by_group(shifted, scores, groups, iou_threshold)


def _nms_group_by_group(shifted: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
                        iou_threshold: float) -> torch.Tensor:
    order = torch.argsort(groups, stable=True)
    sizes = torch.bincount(groups - groups.min()).tolist()  # the one host read; counts need no sorting
    kept, start = [], 0
    for size in sizes:
        if size:
            members = order[start:start + size]
            kept.append(members[nms(shifted[members], scores[members], iou_threshold)])
        start += size
    keep = torch.cat(kept)
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]
