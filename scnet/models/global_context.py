"""SCNet's global context branch: residual convs on the top FPN level, global average pooling, a
multi-label classifier trained with BCE; the pooled vector is added to every RoI feature of its image."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scnet.models.blocks import conv_stack


class GlobalContextHead(nn.Module):
    def __init__(self, *, channels: int, num_convs: int, num_classes: int) -> None:
        super().__init__()
        self.blocks = conv_stack(channels, num_convs, residual=True)
        self.classifier = nn.Linear(channels, num_classes)
        self.num_classes = num_classes

    def forward(self, top_level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(multi-label logits [B, C], context vectors [B, channels, 1, 1])."""
        x = top_level
        for block in self.blocks:
            x = block(x)
        pooled = F.adaptive_avg_pool2d(x, 1)
        return self.classifier(pooled.flatten(1)), pooled

    def loss(self, logits: torch.Tensor, labels: list[torch.Tensor]) -> torch.Tensor:
        targets = torch.zeros_like(logits)
        for i, image_labels in enumerate(labels):
            targets[i].index_fill_(0, image_labels, 1.0)  # the classes present (no unique(): no host read)
        return F.binary_cross_entropy_with_logits(logits, targets)


def add_context(roi_features: torch.Tensor, context: torch.Tensor, rois: torch.Tensor, *,
                in_place: bool = False) -> torch.Tensor:
    per_roi = context[rois[:, 0].long()]
    return roi_features.add_(per_roi) if in_place else roi_features + per_roi
