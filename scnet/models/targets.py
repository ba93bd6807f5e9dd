"""Training targets for one R-CNN stage: sampled RoIs with their classes, box deltas and mask crops."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import roi_align

from scnet.models import box_coder
from scnet.models.roi_features import image_blocks
from scnet.models.sampling import add_ground_truth, assign, sample, valid_first_ascending
from scnet.models.step_record import SamplingContext


@dataclass
class StageSamples:
    """The RoIs one stage trains on: per image a block of its positives, then its negatives (the
    ground truths added as proposals first among the positives). The block sizes are known on the host,
    so every later selection is a slice or one index, never a boolean mask."""

    rois: torch.Tensor  # [N, 5]
    labels: torch.Tensor  # [N] class or num_classes for background
    box_targets: torch.Tensor  # [P, 4] deltas of the positives
    pos_rows: torch.Tensor  # [P] the rows of the positives in `rois`
    counts: list[tuple[int, int, int]]  # per image: positives, negatives, ground truths among the positives
    pos_gt_index: list[torch.Tensor]  # per image, ground truth of each positive
    pos_iou: torch.Tensor  # [P]

    @property
    def num_positives(self) -> int:
        return sum(c[0] for c in self.counts)

    @property
    def blocks(self) -> list[tuple[int, int]]:
        """(start, stop) of each image's rows."""
        return image_blocks([num_pos + num_neg for num_pos, num_neg, _ in self.counts])

    @property
    def positive_rois(self) -> torch.Tensor:
        return self.rois[self.pos_rows]

    @property
    def positive_labels(self) -> torch.Tensor:
        return self.labels[self.pos_rows]


@dataclass(frozen=True)
class StageSampler:
    """One box stage's assigner and sampler, built once per stage (MMDetection keeps one pair per stage,
    detectron2 its `proposal_matchers[stage]`): assign the proposals alone, append the ground truths as
    proposals, sample (MMDetection's order). Every image is sampled in fixed-size slots first; one host
    read of how many each took then cuts the blocks."""

    name: str  # the sampler's name in the step record (scnet.models.step_record)
    iou_thr: float
    low_quality: bool
    num: int
    pos_fraction: float
    stds: tuple[float, ...]
    num_classes: int

    def __call__(self, proposals: list[torch.Tensor], gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor],
                 sampling: SamplingContext) -> StageSamples:
        drawn = []
        for props, gts in zip(proposals, gt_boxes):
            props = props[:, :4]
            assignment = assign(props, gts, pos_thr=self.iou_thr, neg_thr=self.iou_thr, min_pos=self.iou_thr,
                                low_quality=self.low_quality)
            chosen = sample(add_ground_truth(assignment, gts.shape[0]), num=sampling.size(self.num),
                            pos_fraction=self.pos_fraction, generator=sampling.generator)
            gts_taken = (chosen.pos_valid & (chosen.pos_slots < gts.shape[0])).sum()
            drawn.append((chosen, torch.cat([gts.to(props.dtype), props]),
                          torch.stack([chosen.num_pos, chosen.num_neg, gts_taken])))
        counts = [tuple(c) for c in torch.stack([d[2] for d in drawn]).tolist()]  # the one host read
        rois, labels, targets, pos_rows, gt_index, ious = [], [], [], [], [], []
        start = 0
        for i, ((chosen, candidates, _), (num_pos, num_neg, _), gts, gt_cls) in enumerate(
                zip(drawn, counts, gt_boxes, gt_labels)):
            sampling.record.add_sample(self.name, num_pos, num_neg)
            pos_index = valid_first_ascending(chosen.pos_slots, chosen.pos_valid)[:num_pos]
            neg_index = valid_first_ascending(chosen.neg_slots, chosen.neg_valid)[:num_neg]
            boxes = candidates[torch.cat([pos_index, neg_index])]
            rois.append(torch.cat([boxes.new_full((boxes.shape[0], 1), i), boxes], dim=1))
            pos_gt = chosen.gt_index[pos_index] - 1
            image_labels = gt_cls.new_full((num_pos + num_neg,), self.num_classes)
            image_labels[:num_pos] = gt_cls[pos_gt]
            labels.append(image_labels)
            targets.append(box_coder.encode(boxes[:num_pos], gts[pos_gt], self.stds))
            pos_rows.append(torch.arange(start, start + num_pos, device=boxes.device))
            gt_index.append(pos_gt)
            ious.append(chosen.max_iou[pos_index])
            start += num_pos + num_neg
        return StageSamples(rois=torch.cat(rois), labels=torch.cat(labels), box_targets=torch.cat(targets),
                            pos_rows=torch.cat(pos_rows), counts=counts, pos_gt_index=gt_index,
                            pos_iou=torch.cat(ious))


def mask_targets(samples: StageSamples, gt_masks: list[torch.Tensor], size: int) -> torch.Tensor:
    """Binary [P, size, size] crops of each positive's ground-truth mask (RoIAlign, then >= 0.5)."""
    crops = []
    pos_rois = samples.positive_rois
    start = 0
    for i, (masks, (num_pos, _, _)) in enumerate(zip(gt_masks, samples.counts)):
        if num_pos == 0:
            continue
        gt_index = samples.pos_gt_index[i].to(torch.float32)
        rois = torch.cat([gt_index[:, None], pos_rois[start:start + num_pos, 1:]], dim=1)
        crop = roi_align(masks[:, None].float(), rois, size, spatial_scale=1.0, sampling_ratio=0, aligned=True)
        crops.append(crop[:, 0] >= 0.5)
        start += num_pos
    if not crops:
        return torch.zeros(0, size, size, dtype=torch.bool, device=pos_rois.device)
    return torch.cat(crops)
