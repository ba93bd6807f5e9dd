"""Test-time post-processing: class-wise NMS over per-class scores, and pasting 28x28 mask
probabilities into the image (MMDetection's grid-sample paste, restricted to each box's neighbourhood)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from scnet.models.nms import batched_nms


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


# Bytes of float32 sampling grid a chunk of boxes may take when pasting on the GPU.
PASTE_CHUNK_BYTES = 256 * 2**20


def paste_masks(probabilities: torch.Tensor, boxes: torch.Tensor, image_hw: tuple[int, int],
                threshold: float) -> torch.Tensor:
    """Binary masks [N, H, W] from per-box probabilities [N, h, w] and boxes in image pixels.

    Each mask is resampled only over the pixels its box can reach (one pixel of margin), which is what
    MMDetection does on CPU and is where the time of full-image pasting is saved. On CPU the boxes
    are pasted one by one (reading a box's corners costs nothing there); on a GPU that read would be
    a host synchronisation per detection, so the boxes are pasted in chunks with one read per image
    (`paste_masks_batched`, same pixels).
    """
    if probabilities.device.type != "cpu":
        return paste_masks_batched(probabilities, boxes, image_hw, threshold)
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


def paste_masks_batched(probabilities: torch.Tensor, boxes: torch.Tensor, image_hw: tuple[int, int],
                        threshold: float, chunk_bytes: int = PASTE_CHUNK_BYTES) -> torch.Tensor:
    """`paste_masks` for many boxes at once: the same sample points and the same per-box window,
    computed for a chunk of boxes over the chunk's joint window; one host read per call."""
    height, width = image_hw
    n = probabilities.shape[0]
    device = probabilities.device
    out = torch.zeros(n, height, width, dtype=torch.bool, device=device)
    if n == 0:
        return out
    boxes = boxes.float()
    x0, y0, x1, y1 = boxes.unbind(1)
    lefts = (torch.floor(x0) - 1).clamp(min=0)
    tops = (torch.floor(y0) - 1).clamp(min=0)
    rights = (torch.ceil(x1) + 1).clamp(max=width)
    bottoms = (torch.ceil(y1) + 1).clamp(max=height)
    windows = torch.stack([lefts, tops, rights, bottoms], 1).to(torch.int64)
    bounds = windows.tolist()  # the one host synchronisation
    start = 0
    while start < n:
        stop = start + 1
        left, top, right, bottom = bounds[start]
        while stop < n:
            l2, t2, r2, b2 = bounds[stop]
            area = (max(right, r2) - min(left, l2)) * (max(bottom, b2) - min(top, t2))
            if area * (stop + 1 - start) * 8 > chunk_bytes:
                break
            left, top, right, bottom = min(left, l2), min(top, t2), max(right, r2), max(bottom, b2)
            stop += 1
        if right > left and bottom > top:
            _paste_chunk(probabilities[start:stop], boxes[start:stop], windows[start:stop],
                         (left, top, right, bottom), threshold, out[start:stop])
        start = stop
    return out


def _paste_chunk(probabilities: torch.Tensor, boxes: torch.Tensor, windows: torch.Tensor,
                 region: tuple[int, int, int, int], threshold: float, out: torch.Tensor) -> None:
    left, top, right, bottom = region
    device = probabilities.device
    x0, y0, x1, y1 = (v[:, None] for v in boxes.unbind(1))
    ys = torch.arange(top, bottom, device=device, dtype=torch.float32)[None, :] + 0.5
    xs = torch.arange(left, right, device=device, dtype=torch.float32)[None, :] + 0.5
    ys = (ys - y0) / (y1 - y0) * 2 - 1
    xs = (xs - x0) / (x1 - x0) * 2 - 1
    ys = torch.where(torch.isinf(ys), torch.zeros_like(ys), ys)
    xs = torch.where(torch.isinf(xs), torch.zeros_like(xs), xs)
    count, rows, cols = ys.shape[0], ys.shape[1], xs.shape[1]
    grid = torch.stack([xs[:, None, :].expand(count, rows, cols), ys[:, :, None].expand(count, rows, cols)], dim=3)
    sampled = F.grid_sample(probabilities[:, None].float(), grid, align_corners=False)[:, 0] >= threshold
    # Keep each box to its own window, as the one-by-one paste does.
    row_ids = torch.arange(top, bottom, device=device)[None, :]
    col_ids = torch.arange(left, right, device=device)[None, :]
    in_rows = (row_ids >= windows[:, 1:2]) & (row_ids < windows[:, 3:4])
    in_cols = (col_ids >= windows[:, 0:1]) & (col_ids < windows[:, 2:3])
    out[:, top:bottom, left:right] = sampled & in_rows[:, :, None] & in_cols[:, None, :]
