"""Test-time post-processing: class-wise NMS over per-class scores, and pasting 28x28 mask
probabilities into the image (MMDetection's grid-sample paste, restricted to each box's neighbourhood)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms


def multiclass_nms(boxes: torch.Tensor, scores: torch.Tensor, *, score_thr: float, iou_thr: float,
                   max_per_image: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """boxes [N, 4] (shared by all classes) or [N, C*4]; scores [N, C+1] with background last."""
    num_classes = scores.shape[1] - 1
    if boxes.shape[1] == 4:
        boxes = boxes[:, None, :].expand(-1, num_classes, 4)
    else:
        boxes = boxes.view(boxes.shape[0], num_classes, 4)
    class_scores = scores[:, :num_classes]
    keep_mask = class_scores > score_thr
    box_index, labels = torch.nonzero(keep_mask, as_tuple=True)
    candidate_boxes = boxes[box_index, labels]
    candidate_scores = class_scores[box_index, labels]
    keep = batched_nms(candidate_boxes, candidate_scores, labels, iou_thr)[:max_per_image]
    return candidate_boxes[keep], candidate_scores[keep], labels[keep]


def paste_masks(probabilities: torch.Tensor, boxes: torch.Tensor, image_hw: tuple[int, int],
                threshold: float) -> torch.Tensor:
    """Binary masks [N, H, W] from per-box probabilities [N, h, w] and boxes in image pixels.

    Each mask is resampled only over the pixels its box can reach (one pixel of margin), which is what
    MMDetection does on CPU and is where the time of full-image pasting is saved.
    """
    height, width = image_hw
    n = probabilities.shape[0]
    out = torch.zeros(n, height, width, dtype=torch.bool, device=probabilities.device)
    for i in range(n):
        x0, y0, x1, y1 = boxes[i].tolist()
        left = max(int(math.floor(x0)) - 1, 0)
        top = max(int(math.floor(y0)) - 1, 0)
        right = min(int(math.ceil(x1)) + 1, width)
        bottom = min(int(math.ceil(y1)) + 1, height)
        if right <= left or bottom <= top:
            continue
        ys = torch.arange(top, bottom, device=boxes.device, dtype=torch.float32) + 0.5
        xs = torch.arange(left, right, device=boxes.device, dtype=torch.float32) + 0.5
        ys = (ys - y0) / (y1 - y0) * 2 - 1
        xs = (xs - x0) / (x1 - x0) * 2 - 1
        ys = torch.where(torch.isinf(ys), torch.zeros_like(ys), ys)
        xs = torch.where(torch.isinf(xs), torch.zeros_like(xs), xs)
        grid = torch.stack([xs[None, :].expand(ys.numel(), -1), ys[:, None].expand(-1, xs.numel())], dim=2)
        sampled = F.grid_sample(probabilities[i][None, None].float(), grid[None], align_corners=False)
        out[i, top:bottom, left:right] = sampled[0, 0] >= threshold
    return out
