"""Max-IoU assignment and random positive/negative sampling with MMDetection 3.3.0's semantics
(`MaxIoUAssigner`, `RandomSampler`), shared by the RPN and every R-CNN stage, in tensor ops of sizes
the host knows: no step waits on the device to learn how many candidates matched.

Order of operations, as in MMDetection: the assigner sees the candidates alone (anchors, or the
proposals of a box stage); ground-truth boxes are appended afterwards by the sampler
(`add_gt_as_proposals`, see `add_ground_truth`), so low-quality matching ("each ground truth also
takes its best candidate") looks at real proposals only.

Sampling draws the same distribution as MMDetection's `RandomSampler` (a uniform subset without
replacement of at most num x pos_fraction positives, then of negatives filling the sample to num) from
one random permutation of the candidates: the positives (negatives) with the smallest ranks are taken.
Restricted to either set the permutation is a uniform random order, and the two restrictions are
independent, so each subset is uniform and the two are drawn independently, as MMDetection's two
`randperm` calls do. The result comes as fixed-size slots (`Sample`) with a validity mask.

`TAKE_ALL` as the sample size makes every sampler take every candidate (MMDetection's
`RandomSampler` with `num` = 10^7): the diagnostic mode of `python -m scnet.train_step --sampler all`;
then nothing is drawn and the slots hold the candidates in index order.
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
           low_quality: bool, valid: torch.Tensor | None = None) -> Assignment:
    """MMDetection's MaxIoUAssigner. `valid` (bool [N]): the candidates that take part at all (the RPN's
    anchors inside the image); the others are ignored, as if they had not been given."""
    n = boxes.shape[0]
    if gt_boxes.shape[0] == 0 or n == 0:
        gt_index = torch.zeros(n, dtype=torch.long, device=boxes.device)
        if valid is not None:
            gt_index = torch.where(valid, gt_index, -1)
        return Assignment(gt_index, boxes.new_zeros(n))
    overlaps = box_iou(gt_boxes, boxes)  # [G, N]
    if valid is not None:
        overlaps = overlaps.masked_fill(~valid, -1.0)  # below every IoU: neither negative nor anyone's best
    max_iou, argmax = overlaps.max(dim=0)
    ignore = torch.full_like(argmax, -1)
    gt_index = torch.where((max_iou >= 0) & (max_iou < neg_thr), torch.zeros_like(argmax), ignore)
    gt_index = torch.where(max_iou >= pos_thr, argmax + 1, gt_index)
    if low_quality:
        # each ground truth with a best IoU >= min_pos also takes every candidate at that IoU; MMDetection
        # loops over the ground truths in order, so the last one that claims a candidate keeps it
        gt_max = overlaps.max(dim=1, keepdim=True).values  # [G, 1]
        claims = (overlaps == gt_max) & (gt_max >= min_pos)
        num_gt = claims.shape[0]
        ids = torch.arange(1, num_gt + 1, dtype=torch.int16 if num_gt < 2 ** 15 else torch.int32, device=boxes.device)
        last_claim = (claims.to(ids.dtype) * ids[:, None]).amax(dim=0)  # 1-based, 0: nobody's best
        gt_index = torch.where(last_claim > 0, last_claim.long(), gt_index)
    return Assignment(gt_index, max_iou)


def add_ground_truth(assignment: Assignment, num_gt: int) -> Assignment:
    """The assignment of `cat([gt_boxes, candidates])`: each ground truth assigned to itself at IoU 1
    (MMDetection's `AssignResult.add_gt_`)."""
    own = torch.arange(1, num_gt + 1, dtype=assignment.gt_index.dtype, device=assignment.gt_index.device)
    return Assignment(torch.cat([own, assignment.gt_index]),
                      torch.cat([assignment.max_iou.new_ones(num_gt), assignment.max_iou]))


@dataclass
class Sample:
    """The sampled candidates as fixed-size slots: `pos_slots` / `neg_slots` index the candidates,
    `pos_valid` / `neg_valid` say which slots hold a sampled one (the valid slots come first)."""

    pos_slots: torch.Tensor  # [min(N, num x pos_fraction)]
    pos_valid: torch.Tensor
    neg_slots: torch.Tensor  # [min(N, num)]
    neg_valid: torch.Tensor
    gt_index: torch.Tensor  # [N] the assignment's (0-based ground truth of a positive: gt_index - 1)
    max_iou: torch.Tensor  # [N]

    @property
    def num_pos(self) -> torch.Tensor:
        return self.pos_valid.sum()

    @property
    def num_neg(self) -> torch.Tensor:
        return self.neg_valid.sum()


def _ranks(n: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """A uniform random permutation of 0..n-1, drawn on the candidates' device (from `generator` when
    it lives there; else on the generator's device and copied, for diagnostics on a CPU generator)."""
    if generator is None or generator.device == device:
        return torch.randperm(n, generator=generator, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def _smallest(ranks: torch.Tensor, member: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k members of smallest rank, in rank order, and which of the k slots hold a member."""
    n = ranks.shape[0]
    keys = torch.where(member, ranks, n)  # non-members after every member
    values, slots = torch.topk(keys, k, largest=False, sorted=True)
    return slots, values < n


def sample(assignment: Assignment, *, num: int, pos_fraction: float,
           generator: torch.Generator | None = None) -> Sample:
    gt_index = assignment.gt_index
    n = gt_index.shape[0]
    positive, negative = gt_index > 0, gt_index == 0
    k_pos, k_neg = min(int(num * pos_fraction), n), min(num, n)
    if k_pos == n and k_neg == n:  # every candidate is taken: nothing to draw
        ranks = torch.arange(n, device=gt_index.device)
    else:
        ranks = _ranks(n, gt_index.device, generator)
    pos_slots, pos_valid = _smallest(ranks, positive, k_pos)
    neg_slots, neg_valid = _smallest(ranks, negative, k_neg)
    # negatives fill the sample up to num: the first (num - positives taken) valid slots
    wanted = num - pos_valid.sum()
    neg_valid &= torch.arange(k_neg, device=gt_index.device) < wanted
    return Sample(pos_slots, pos_valid, neg_slots, neg_valid, gt_index, assignment.max_iou)


def valid_first_ascending(slots: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The slots' candidate indices with the valid ones first, ascending (MMDetection's `unique()`
    leaves its samples sorted); the invalid ones after them."""
    return torch.where(valid, slots, slots.new_full((), torch.iinfo(slots.dtype).max)).sort().values
