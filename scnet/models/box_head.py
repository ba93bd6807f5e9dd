"""Box branch of one stage: two shared fully connected layers, then class logits and box deltas."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BoxHead(nn.Module):
    def __init__(self, *, in_channels: int, roi_size: int, fc_channels: int, num_classes: int,
                 class_agnostic: bool) -> None:
        super().__init__()
        self.fcs = nn.ModuleList([nn.Linear(in_channels * roi_size * roi_size, fc_channels),
                                  nn.Linear(fc_channels, fc_channels)])
        self.classifier = nn.Linear(fc_channels, num_classes + 1)
        self.regressor = nn.Linear(fc_channels, 4 if class_agnostic else 4 * num_classes)
        self.class_agnostic = class_agnostic
        self.num_classes = num_classes

    def forward(self, roi_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class logits [N, C+1], deltas [N, 4 or 4C], and the shared feature [N, fc] (for feature relay)."""
        x = roi_features.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return self.classifier(x), self.regressor(x), x

    def select_deltas(self, deltas: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The 4 deltas for each box's label (class-specific heads), or the only 4."""
        if self.class_agnostic:
            return deltas
        return deltas.view(deltas.shape[0], -1, 4)[torch.arange(deltas.shape[0], device=deltas.device), labels]
