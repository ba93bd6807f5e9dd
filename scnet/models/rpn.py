"""Region proposal network: a shared 3x3 conv, objectness and box deltas per anchor, per-level top-k,
decoding, and NMS across levels (MMDetection's RPNHead semantics)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scnet.models import box_coder, onednn
from scnet.models.anchors import BASE_ANCHORS_FLOAT32, RATIOS, STRIDES, grid_anchors
from scnet.models.losses import box_regression_loss
from scnet.models.nms import batched_nms
from scnet.models.sampling import assign, sample
from scnet.models.step_record import SamplingContext

_UNIT_STDS = (1.0, 1.0, 1.0, 1.0)


class RPN(nn.Module):
    def __init__(self, channels: int, *, bbox_loss: str, train_pre_nms: int, train_post_nms: int,
                 test_pre_nms: int, test_post_nms: int, allowed_border: int = -1, size_divisor: int = 32) -> None:
        super().__init__()
        anchors = len(RATIOS)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness = nn.Conv2d(channels, anchors, 1)
        self.deltas = nn.Conv2d(channels, anchors * 4, 1)
        self.bbox_loss = bbox_loss
        self.train_pre_nms, self.train_post_nms = train_pre_nms, train_post_nms
        self.test_pre_nms, self.test_post_nms = test_pre_nms, test_post_nms
        self.allowed_border, self.size_divisor = allowed_border, size_divisor

    def head(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: objectness logits [B, H*W*A] and deltas [B, H*W*A, 4], ordered like the anchors."""
        logits, deltas = [], []
        for f in features:
            level_logits, level_deltas = self._level_head_onednn(f) if onednn.enabled(f) else self._level_head(f)
            b = f.shape[0]
            logits.append(level_logits.permute(0, 2, 3, 1).reshape(b, -1))
            deltas.append(level_deltas.permute(0, 2, 3, 1).reshape(b, -1, 4))
        return logits, deltas

    def _level_head(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = F.relu(self.conv(feature))
        return self.objectness(t), self.deltas(t)

    def _level_head_onednn(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """_level_head() with the shared conv's output left in oneDNN's layout for the two 1x1 convs:
        bit-identical, and about 10% faster on CPU (scnet.models.onednn)."""
        t = torch.relu(onednn.conv2d(self.conv, feature.contiguous().to_mkldnn()))
        return onednn.conv2d(self.objectness, t).to_dense(), onednn.conv2d(self.deltas, t).to_dense()

    @staticmethod
    def anchors(features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [grid_anchors(tuple(f.shape[-2:]), s, f.device) for f, s in zip(features, STRIDES)]

    def proposals(self, logits: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
                  image_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Boxes [K, 4] per image, best first, after NMS 0.7 within each level (MMDetection's
        `_bbox_post_process`): the boxes of zero width or height are dropped first, after one host read
        of how many there are in the whole batch."""
        pre_nms = self.train_pre_nms if self.training else self.test_pre_nms
        post_nms = self.train_post_nms if self.training else self.test_post_nms
        candidates = []
        for i, image_hw in enumerate(image_sizes):
            boxes_all, scores_all, levels_all = [], [], []
            for level, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
                scores = lg[i].detach().sigmoid()
                d = dl[i].detach()
                if scores.numel() > pre_nms:
                    scores, keep = scores.topk(pre_nms, sorted=True)
                    d, an = d[keep], an[keep]
                boxes_all.append(box_coder.decode(an, d, _UNIT_STDS, image_hw))
                scores_all.append(scores)
                levels_all.append(torch.full_like(scores, level, dtype=torch.long))
            boxes = torch.cat(boxes_all)
            wh = boxes[:, 2:] - boxes[:, :2]
            candidates.append((boxes, torch.cat(scores_all), torch.cat(levels_all), (wh[:, 0] > 0) & (wh[:, 1] > 0)))
        num_valid = torch.stack([valid.sum() for *_, valid in candidates]).tolist()  # the one host read
        results = []
        for (boxes, scores, levels, valid), count in zip(candidates, num_valid):
            if count < boxes.shape[0]:  # keep the valid boxes, in order
                kept = torch.sort((~valid).to(torch.uint8), stable=True).indices[:count]
                boxes, scores, levels = boxes[kept], scores[kept], levels[kept]
            results.append(boxes[batched_nms(boxes, scores, levels, 0.7)[:post_nms]])
        return results

    @staticmethod
    def trainable_anchors(anchors: list[torch.Tensor], feature_sizes: list[tuple[int, int]],
                          image_hw: tuple[int, int], allowed_border: int, size_divisor: int) -> torch.Tensor:
        """Which anchors of the padded batch take part in an image's RPN loss (MMDetection's
        `valid_flags` and `anchor_inside_flags`): those on the feature cells of the image padded to
        `size_divisor` on its own, and, when `allowed_border` >= 0, lying within the image (not the
        padding) up to that margin: x1, y1 >= -border, x2 < width + border, y2 < height + border."""
        h, w = image_hw
        flags = []
        for (feat_h, feat_w), stride, (num_rows, num_cols) in zip(
                feature_sizes, STRIDES, _own_cells(feature_sizes, image_hw, size_divisor)):
            device = anchors[0].device
            rows = torch.arange(feat_h, device=device) < num_rows
            cols = torch.arange(feat_w, device=device) < num_cols
            flags.append((rows[:, None] & cols[None, :]).reshape(-1).repeat_interleave(len(RATIOS)))
        inside = torch.cat(flags)
        if allowed_border >= 0:
            a = torch.cat(anchors)
            inside &= ((a[:, 0] >= -allowed_border) & (a[:, 1] >= -allowed_border)
                       & (a[:, 2] < w + allowed_border) & (a[:, 3] < h + allowed_border))
        return inside

    @staticmethod
    def any_trainable_anchor(feature_sizes: list[tuple[int, int]], image_hw: tuple[int, int], allowed_border: int,
                             size_divisor: int) -> bool:
        """Whether `trainable_anchors` holds any anchor, worked out on the host: the condition is a
        product of one on the anchor's column and one on its row, per level and ratio."""
        h, w = image_hw
        for stride, (num_rows, num_cols) in zip(STRIDES, _own_cells(feature_sizes, image_hw, size_divisor)):
            # the anchors' float32 coordinates, as on the device (numpy: no tensor op to wait on)
            cols = np.arange(num_cols, dtype=np.float32) * np.float32(stride)
            rows = np.arange(num_rows, dtype=np.float32) * np.float32(stride)
            for x1, y1, x2, y2 in BASE_ANCHORS_FLOAT32[stride]:
                if allowed_border < 0:
                    fits = cols.size > 0 and rows.size > 0
                else:
                    fits = bool(((cols + x1 >= -allowed_border) & (cols + x2 < w + allowed_border)).any()
                                and ((rows + y1 >= -allowed_border) & (rows + y2 < h + allowed_border)).any())
                if fits:
                    return True
        return False

    def loss(self, logits: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
             feature_sizes: list[tuple[int, int]], gt_boxes: list[torch.Tensor],
             image_sizes: list[tuple[int, int]], sampling: SamplingContext) -> dict[str, torch.Tensor]:
        """Binary cross-entropy and box loss over the sampled anchors of every image, both divided by the
        total number of samples (MMDetection's `avg_factor`). The samples stay in their fixed-size slots,
        invalid slots weighted 0: no host read, and every parameter in the graph even without a positive."""
        for i, image_hw in enumerate(image_sizes):
            if not self.any_trainable_anchor(feature_sizes, image_hw, self.allowed_border, self.size_divisor):
                raise ValueError(f"image {i} of size {image_hw} has no anchor inside it for the RPN loss "
                                 f"(allowed_border={self.allowed_border})")
        all_anchors = torch.cat(anchors)
        all_logits = torch.cat(logits, dim=1)
        all_deltas = torch.cat(deltas, dim=1)
        cls_losses, box_losses, num_samples = [], [], []
        for i, gt in enumerate(gt_boxes):
            inside = self.trainable_anchors(anchors, feature_sizes, image_sizes[i], self.allowed_border,
                                            self.size_divisor)
            assignment = assign(all_anchors, gt, pos_thr=0.7, neg_thr=0.3, min_pos=0.3, low_quality=True, valid=inside)
            chosen = sample(assignment, num=sampling.size(256), pos_fraction=0.5, generator=sampling.generator)
            sampling.record.add_sample("rpn", chosen.num_pos, chosen.num_neg)
            slots = torch.cat([chosen.pos_slots, chosen.neg_slots])
            weights = torch.cat([chosen.pos_valid, chosen.neg_valid])
            labels = torch.cat([torch.ones_like(chosen.pos_slots, dtype=all_logits.dtype),
                                torch.zeros_like(chosen.neg_slots, dtype=all_logits.dtype)])
            bce = F.binary_cross_entropy_with_logits(all_logits[i, slots], labels, reduction="none")
            cls_losses.append(torch.where(weights, bce, 0.0).sum())
            pos = chosen.pos_slots
            if gt.shape[0]:
                pos_gt = (chosen.gt_index[pos] - 1).clamp(min=0)  # invalid slots: any ground truth, weighted 0
                targets = box_coder.encode(all_anchors[pos], gt[pos_gt], _UNIT_STDS)
                box = box_regression_loss(all_deltas[i, pos], targets, self.bbox_loss, beta=1.0 / 9.0, reduction="none")
                box_losses.append(torch.where(chosen.pos_valid[:, None], box, 0.0).sum())
            else:
                box_losses.append(all_deltas[i, pos].sum() * 0)
            num_samples.append(weights.sum())
        denom = torch.stack(num_samples).sum().clamp(min=1)
        return {"rpn_cls": torch.stack(cls_losses).sum() / denom, "rpn_bbox": torch.stack(box_losses).sum() / denom}


def _own_cells(feature_sizes: list[tuple[int, int]], image_hw: tuple[int, int],
               size_divisor: int) -> list[tuple[int, int]]:
    """Per level, the rows and columns of feature cells that the image padded on its own covers."""
    pad_h = -(-image_hw[0] // size_divisor) * size_divisor
    pad_w = -(-image_hw[1] // size_divisor) * size_divisor
    return [(min(-(-pad_h // stride), feat_h), min(-(-pad_w // stride), feat_w))
            for (feat_h, feat_w), stride in zip(feature_sizes, STRIDES)]
