"""Delta (dx, dy, dw, dh) box coding with MMDetection's conventions: no +1 in widths, dw/dh clamped at
log(1000/16), decoded boxes clipped to the unpadded image."""
from __future__ import annotations

import math

import torch

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
    return deltas / deltas.new_tensor(stds)


def decode(boxes: torch.Tensor, deltas: torch.Tensor, stds: tuple[float, ...],
           image_hw: tuple[int, int] | None) -> torch.Tensor:
    deltas = deltas * deltas.new_tensor(stds)
    centers = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    sizes = boxes[:, 2:] - boxes[:, :2]
    dwh = deltas[:, 2:].clamp(min=-_MAX_LOG_RATIO, max=_MAX_LOG_RATIO)
    new_centers = centers + sizes * deltas[:, :2]
    new_sizes = sizes * dwh.exp()
    out = torch.cat([new_centers - new_sizes * 0.5, new_centers + new_sizes * 0.5], dim=1)
    if image_hw is not None:
        h, w = image_hw
        out[:, 0::2] = out[:, 0::2].clamp(min=0, max=w)
        out[:, 1::2] = out[:, 1::2].clamp(min=0, max=h)
    return out
