"""Delta (dx, dy, dw, dh) box coding with MMDetection's conventions: no +1 in widths, dw/dh clamped at
log(1000/16), decoded boxes clipped to the unpadded image."""
from __future__ import annotations

import math

import torch

from scnet.models.device_constants import device_constant

_MAX_LOG_RATIO = abs(math.log(16 / 1000))


def encode(proposals: torch.Tensor, gt: torch.Tensor, stds: tuple[float, ...]) -> torch.Tensor:
    pw = proposals[:, 2] - proposals[:, 0]
    ph = proposals[:, 3] - proposals[:, 1]
    px = (proposals[:, 0] + proposals[:, 2]) * 0.5
    py = (proposals[:, 1] + proposals[:, 3]) * 0.5
    gw = gt[:, 2] - gt[:, 0]
    gh = gt[:, 3] - gt[:, 1]
    gx = (gt[:, 0] + gt[:, 2]) * 0.5
    gy = (gt[:, 1] + gt[:, 3]) * 0.5
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=1)
    return deltas / device_constant(stds, deltas)


def decode(boxes: torch.Tensor, deltas: torch.Tensor, stds: tuple[float, ...],
           image_hw: tuple[int, int] | None) -> torch.Tensor:
    deltas = deltas * device_constant(stds, deltas)
    centers = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    sizes = boxes[:, 2:] - boxes[:, :2]
    dwh = deltas[:, 2:].clamp(min=-_MAX_LOG_RATIO, max=_MAX_LOG_RATIO)
    new_centers = centers + sizes * deltas[:, :2]
    new_sizes = sizes * dwh.exp()
    out = torch.cat([new_centers - new_sizes * 0.5, new_centers + new_sizes * 0.5], dim=1)
    if image_hw is not None:
        clip_(out, image_hw)
    return out


def clip_(boxes: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Clip boxes [N, 4k] (x1, y1, x2, y2 repeated) to an image, in place."""
    h, w = image_hw
    boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=h)
    return boxes


def clip_blocks_(boxes: torch.Tensor, blocks: list[tuple[int, int]], image_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """Clip boxes whose rows come in one block (start, stop) per image to their own image, in place:
    all images decoded at once, no host read of which row is whose."""
    for (start, stop), hw in zip(blocks, image_sizes):
        clip_(boxes[start:stop], hw)
    return boxes
