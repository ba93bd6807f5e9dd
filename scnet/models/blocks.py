"""Convolution blocks shared by the mask, semantic and global-context heads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scnet.models import onednn


class ConvReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))

    def forward_onednn(self, x: torch.Tensor) -> torch.Tensor:
        """forward() for a tensor in oneDNN's layout (see scnet.models.onednn)."""
        return torch.relu(onednn.conv2d(self.conv, x))


class ResidualBlock(nn.Module):
    """Two 3x3 convs with a skip connection, no normalisation and no ReLU after the sum (MMDetection's
    SimplifiedBasicBlock): SCNet's "skip connection after every two convs"."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))

    def forward_onednn(self, x: torch.Tensor) -> torch.Tensor:
        """forward() for a tensor in oneDNN's layout (see scnet.models.onednn)."""
        return x + onednn.conv2d(self.conv2, torch.relu(onednn.conv2d(self.conv1, x)))


def conv_stack(channels: int, count: int, residual: bool, in_channels: int | None = None) -> nn.ModuleList:
    """`count` 3x3 convs, plain or as count/2 residual blocks."""
    in_channels = channels if in_channels is None else in_channels
    if residual:
        return nn.ModuleList(ResidualBlock(channels) for _ in range(count // 2))
    return nn.ModuleList(ConvReLU(in_channels if i == 0 else channels, channels, 3) for i in range(count))
