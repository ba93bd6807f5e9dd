"""HTC's semantic segmentation branch: fuse the five FPN levels at stride 8, convs (residual in SCNet),
per-pixel logits for the loss and an embedding that is pooled into every RoI feature."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scnet.models.blocks import ConvReLU, conv_stack

FUSION_LEVEL = 1  # P3, stride 8
STRIDE = 8


class SemanticHead(nn.Module):
    def __init__(self, *, channels: int, num_levels: int, num_convs: int, num_classes: int, residual: bool) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(ConvReLU(channels, channels, 1) for _ in range(num_levels))
        if residual:
            self.blocks = conv_stack(channels, num_convs, residual=True)
        else:
            self.convs = conv_stack(channels, num_convs, residual=False)
        self.logits = nn.Conv2d(channels, num_classes, 1)
        self.embedding = ConvReLU(channels, channels, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(logits at stride 8, embedding at stride 8); the logits only feed the loss, so inference
        skips them."""
        x = self.lateral[FUSION_LEVEL](features[FUSION_LEVEL])
        size = x.shape[-2:]
        for i, feature in enumerate(features):
            if i != FUSION_LEVEL:
                resized = F.interpolate(feature, size=size, mode="bilinear", align_corners=True)
                x = x + self.lateral[i](resized)
        for layer in getattr(self, "blocks", None) or self.convs:
            x = layer(x)
        logits = self.logits(x) if self.training else None
        return logits, self.embedding(x)

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against the padded target map (255 in the padding) downsampled by nearest
        neighbour to the logits' stride, averaged over *all* its pixels, ignored ones included:
        MMDetection 3.3's CrossEntropyLoss(ignore_index=255) with avg_non_ignore=False.

        The paper's code (thangvubk/SCNet, the MMDetection 2.x of early 2021) built this loss from
        `nn.CrossEntropyLoss(ignore_index=255)`, which averages over the labelled pixels only; we follow
        MMDetection 3.3, whose value is smaller by the labelled share of the padded map."""
        small = F.interpolate(targets[:, None].float(), scale_factor=1.0 / STRIDE, mode="nearest")[:, 0].long()
        h, w = min(small.shape[-2], logits.shape[-2]), min(small.shape[-1], logits.shape[-1])
        small = small[..., :h, :w]
        total = F.cross_entropy(logits[..., :h, :w], small, ignore_index=255, reduction="sum")
        return total / small.numel()
