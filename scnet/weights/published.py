"""The ImageNet files MMDetection 3.3.0's configs start each backbone from, under their published names.

MMDetection's `init_cfg=dict(type='Pretrained', checkpoint=...)` resolves `torchvision://resnet50` and
`torchvision://resnet101` to torchvision's IMAGENET1K_V1 files, and `open-mmlab://resnext101_64x4d` to
OpenMMLab's converted ResNeXt file (mmcv's `model_zoo/open_mmlab.json`). Like `torch.hub`, the file
name carries the first hex digits of the file's SHA-256, so the name alone identifies the content.
This module imports no torch: run configs use it to compute their identity.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedWeights:
    backbone: str      # ModelConfig.backbone
    mmdet_name: str    # what MMDetection's configs write in init_cfg.checkpoint
    url: str

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        """The hash digits in the file name (torch.hub's convention: `name-<sha256 prefix>.ext`)."""
        return sha256_prefix_of(self.file_name)


_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")


def sha256_prefix_of(file_name: str) -> str:
    match = _HASH_IN_NAME.search(file_name)
    if match is None:
        raise ValueError(f"{file_name!r} carries no '-<sha256 prefix>.' part")
    return match.group(1)


PUBLISHED: dict[str, PublishedWeights] = {w.backbone: w for w in (
    PublishedWeights("resnet50", "torchvision://resnet50",
                     "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
    PublishedWeights("resnet101", "torchvision://resnet101",
                     "https://download.pytorch.org/models/resnet101-63fe2227.pth"),
    PublishedWeights("resnext101_64x4d", "open-mmlab://resnext101_64x4d",
                     "https://download.openmmlab.com/pretrain/third_party/resnext101_64x4d-ee2c6f71.pth"),
)}


def published_for(backbone: str) -> PublishedWeights | None:
    """The file MMDetection starts `backbone` from; None for backbones it has none for (resnet18)."""
    return PUBLISHED.get(backbone)
