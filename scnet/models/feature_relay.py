"""Feature relay: the box branch's shared vector, mapped by one FC to a 7x7 map and upsampled x2
(bilinear, aligned corners) so it can be summed with the 14x14 mask features of the same RoIs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureRelay(nn.Module):
    def __init__(self, *, fc_channels: int, mask_channels: int, roi_size: int = 7) -> None:
        super().__init__()
        self.fc = nn.Linear(fc_channels, mask_channels * roi_size * roi_size)
        self.mask_channels, self.roi_size = mask_channels, roi_size

    def forward(self, box_features: torch.Tensor) -> torch.Tensor:
        x = self.fc(box_features).reshape(-1, self.mask_channels, self.roi_size, self.roi_size)
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
