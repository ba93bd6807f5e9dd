"""ResNet / ResNeXt trunk returning C2-C5, with MMDetection's frozen stem/stages and frozen BN statistics.

torchvision's ResNet uses the same module names and the same stride placement (on the 3x3 conv, the
"pytorch" style) as MMDetection's, so an MMDetection backbone state dict maps onto it name for name.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet

_CONSTRUCTORS = {
    "resnet18": resnet.resnet18,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
    "resnext101_64x4d": resnet.resnext101_64x4d,
}


class ResNetTrunk(nn.Module):
    """The four residual stages of a torchvision ResNet without its classifier."""

    def __init__(self, name: str, *, frozen_stages: int = 1, norm_eval: bool = True) -> None:
        super().__init__()
        net = _CONSTRUCTORS[name](weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = [self._stage_channels(getattr(self, f"layer{i}")) for i in range(1, 5)]
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze()

    @staticmethod
    def _stage_channels(stage: nn.Sequential) -> int:
        last = stage[-1]
        bn = getattr(last, "bn3", None) or last.bn2
        return bn.num_features

    def _frozen_modules(self) -> list[nn.Module]:
        modules: list[nn.Module] = []
        if self.frozen_stages >= 0:
            modules += [self.conv1, self.bn1]
        for i in range(1, self.frozen_stages + 1):
            modules.append(getattr(self, f"layer{i}"))
        return modules

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNetTrunk":
        """Keep frozen stages and (with norm_eval) every BN layer in eval mode, as MMDetection does."""
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]
