"""Max-IoU assignment and random positive/negative sampling with MMDetection 3.3.0's semantics
(`MaxIoUAssigner`, `RandomSampler`), shared by the RPN and every R-CNN stage.

Order of operations, as in MMDetection: the assigner sees the candidates alone (anchors, or the
proposals of a box stage); ground-truth boxes are appended afterwards by the sampler
(`add_gt_as_proposals`, see `add_ground_truth`), so low-quality matching ("each ground truth also
takes its best candidate") looks at real proposals only. Sampled indices come back sorted, as
MMDetection's `unique()` leaves them.

`TAKE_ALL` as the sample size makes every sampler take every candidate (MMDetection's
`RandomSampler` with `num` = 10^7): the diagnostic mode of `python -m scnet.train_step --sampler all`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import box_iou

TAKE_ALL = 10 ** 7
SAMPLING_MODES = ("random", "all")


@dataclass
class Assignment:
    gt_index: torch.Tensor  # [N] -1 ignore, 0 background, k > 0 -> ground truth k - 1
    max_iou: torch.Tensor  # [N]


def assign(boxes: torch.Tensor, gt_boxes: torch.Tensor, *, pos_thr: float, neg_thr: float, min_pos: float,
           low_quality: bool) -> Assignment:
    n = boxes.shape[0]
    gt_index = boxes.new_full((n,), -1, dtype=torch.long)
    if gt_boxes.numel() == 0 or n == 0:
        gt_index.fill_(0)
        return Assignment(gt_index, boxes.new_zeros(n))
    overlaps = box_iou(gt_boxes, boxes)  # [G, N]
    max_iou, argmax = overlaps.max(dim=0)
    gt_max, _ = overlaps.max(dim=1)
    gt_index[(max_iou >= 0) & (max_iou < neg_thr)] = 0
    positive = max_iou >= pos_thr
    gt_index[positive] = argmax[positive] + 1
    if low_quality:
        for g in range(gt_boxes.shape[0]):
            if gt_max[g] >= min_pos:
                gt_index[overlaps[g] == gt_max[g]] = g + 1
    return Assignment(gt_index, max_iou)


def add_ground_truth(assignment: Assignment, num_gt: int) -> Assignment:
    """The assignment of `cat([gt_boxes, candidates])`: each ground truth assigned to itself at IoU 1
    (MMDetection's `AssignResult.add_gt_`)."""
    own = torch.arange(1, num_gt + 1, dtype=assignment.gt_index.dtype, device=assignment.gt_index.device)
    return Assignment(torch.cat([own, assignment.gt_index]),
                      torch.cat([assignment.max_iou.new_ones(num_gt), assignment.max_iou]))


@dataclass
class Sample:
    pos_index: torch.Tensor  # indices into the candidate boxes, ascending
    neg_index: torch.Tensor
    pos_gt: torch.Tensor  # 0-based ground-truth index of each positive
    pos_iou: torch.Tensor  # IoU of each positive with its ground truth
    pos_is_gt: torch.Tensor  # bool: the positive is a ground-truth box added as a proposal


def _choose(index: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    if index.numel() <= count:
        return index
    perm = torch.randperm(index.numel(), generator=generator, device="cpu")[:count].to(index.device)
    return index[perm].sort().values


def sample(assignment: Assignment, *, num: int, pos_fraction: float, num_gt_added: int = 0,
           generator: torch.Generator | None = None) -> Sample:
    gt_index = assignment.gt_index
    pos = torch.nonzero(gt_index > 0).flatten()
    pos = _choose(pos, int(num * pos_fraction), generator)
    neg = torch.nonzero(gt_index == 0).flatten()
    neg = _choose(neg, num - pos.numel(), generator)
    return Sample(pos, neg, gt_index[pos] - 1, assignment.max_iou[pos], pos < num_gt_added)
