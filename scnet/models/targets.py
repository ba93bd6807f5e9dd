"""Training targets for one R-CNN stage: sampled RoIs with their classes, box deltas and mask crops."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import roi_align

from scnet.models import box_coder
from scnet.models.sampling import Sample, add_ground_truth, assign, sample
from scnet.models.step_record import SamplingContext


@dataclass
class StageSamples:
    """The RoIs one stage trains on, positives of each image first (what feature relay slices)."""

    rois: torch.Tensor  # [N, 5]
    labels: torch.Tensor  # [N] class or num_classes for background
    box_targets: torch.Tensor  # [P, 4] deltas of the positives
    is_positive: torch.Tensor  # [N] bool
    is_added_gt: torch.Tensor  # [N] bool: ground-truth boxes added as proposals
    pos_gt_index: list[torch.Tensor]  # per image, ground truth of each positive
    pos_iou: torch.Tensor  # [P]

    @property
    def positive_rois(self) -> torch.Tensor:
        return self.rois[self.is_positive]

    @property
    def positive_labels(self) -> torch.Tensor:
        return self.labels[self.is_positive]


@dataclass(frozen=True)
class StageSampler:
    """One box stage's assigner and sampler, built once per stage (MMDetection keeps one pair per stage,
    detectron2 its `proposal_matchers[stage]`): assign the proposals alone, append the ground truths as
    proposals, sample (MMDetection's order)."""

    name: str  # the sampler's name in the step record (scnet.models.step_record)
    iou_thr: float
    low_quality: bool
    num: int
    pos_fraction: float
    stds: tuple[float, ...]
    num_classes: int

    def __call__(self, proposals: list[torch.Tensor], gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor],
                 sampling: SamplingContext) -> StageSamples:
        rois, labels, targets, positive, added, gt_index, ious = [], [], [], [], [], [], []
        for i, (props, gts, gt_cls) in enumerate(zip(proposals, gt_boxes, gt_labels)):
            props = props[:, :4]
            num_gt = gts.shape[0]
            assignment = assign(props, gts, pos_thr=self.iou_thr, neg_thr=self.iou_thr, min_pos=self.iou_thr,
                                low_quality=self.low_quality)
            assignment = add_ground_truth(assignment, num_gt)
            candidates = torch.cat([gts.to(props.dtype), props])
            chosen: Sample = sample(assignment, num=sampling.size(self.num), pos_fraction=self.pos_fraction,
                                    num_gt_added=num_gt, generator=sampling.generator)
            sampling.record.add_sample(self.name, chosen)
            index = torch.cat([chosen.pos_index, chosen.neg_index])
            boxes = candidates[index]
            rois.append(torch.cat([boxes.new_full((boxes.shape[0], 1), i), boxes], dim=1))
            image_labels = gt_cls.new_full((index.numel(),), self.num_classes)
            image_labels[: chosen.pos_index.numel()] = gt_cls[chosen.pos_gt]
            labels.append(image_labels)
            if chosen.pos_index.numel():
                targets.append(box_coder.encode(candidates[chosen.pos_index], gts[chosen.pos_gt], self.stds))
            is_pos = torch.zeros(index.numel(), dtype=torch.bool, device=index.device)
            is_pos[: chosen.pos_index.numel()] = True
            positive.append(is_pos)
            is_added = torch.zeros_like(is_pos)
            is_added[: chosen.pos_index.numel()] = chosen.pos_is_gt
            added.append(is_added)
            gt_index.append(chosen.pos_gt)
            ious.append(chosen.pos_iou)
        device = gt_boxes[0].device
        return StageSamples(
            rois=torch.cat(rois),
            labels=torch.cat(labels),
            box_targets=torch.cat(targets) if targets else torch.zeros(0, 4, device=device),
            is_positive=torch.cat(positive),
            is_added_gt=torch.cat(added),
            pos_gt_index=gt_index,
            pos_iou=torch.cat(ious),
        )


def mask_targets(samples: StageSamples, gt_masks: list[torch.Tensor], size: int) -> torch.Tensor:
    """Binary [P, size, size] crops of each positive's ground-truth mask (RoIAlign, then >= 0.5)."""
    crops = []
    pos_rois = samples.positive_rois
    offset = 0
    for i, masks in enumerate(gt_masks):
        image_rois = pos_rois[pos_rois[:, 0] == i]
        count = image_rois.shape[0]
        if count == 0:
            continue
        gt_index = samples.pos_gt_index[i].to(torch.float32)
        rois = torch.cat([gt_index[:, None], image_rois[:, 1:]], dim=1)
        crop = roi_align(masks[:, None].float(), rois, size, spatial_scale=1.0, sampling_ratio=0, aligned=True)
        crops.append(crop[:, 0] >= 0.5)
        offset += count
    if not crops:
        return torch.zeros(0, size, size, dtype=torch.bool, device=pos_rois.device)
    return torch.cat(crops)
