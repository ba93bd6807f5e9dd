"""The paper's data augmentation: keep-ratio resize, and horizontal flip in training (MMDetection's rules).

A transform is called as `transform(image, target, meta, generator)` and returns the three updated:
`image` float32 `[3, H, W]` RGB 0..255, `target` with `boxes` xyxy, `labels`, `masks` uint8 `[N, H, W]`
and optionally `semantic_seg` int64 `[H, W]`, and `meta` (`ori_shape`, `img_shape`, `scale_factor`,
`flip`). Every random decision draws from `generator`; `CocoInstances` passes one seeded from
`(seed, epoch, index)` (see `scnet.data.seeding`), so flips are reproducible for any worker count.
Normalisation and padding to a multiple of 32 belong to the model, not here.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Sample = tuple[Tensor, dict[str, Tensor], dict[str, Any]]


class Transform(Protocol):
    def __call__(self, image: Tensor, target: dict[str, Tensor], meta: dict[str, Any],
                 generator: torch.Generator | None = None) -> Sample: ...


def rescale_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int, float]:
    """MMDetection's keep-ratio rule: fit the long side into max(scale) and the short side into min(scale).

    Returns (new_width, new_height, factor) with factor = min(long_max / long_side, short_max /
    short_side) and each side rounded half up, as mmcv's `rescale_size` does.
    """
    long_max, short_max = max(scale), min(scale)
    if short_max < 1:
        raise ValueError(f"resize scale {scale} must have positive sides")
    factor = min(long_max / max(width, height), short_max / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5), factor


class Resize:
    """Keep-ratio resize to fit `scale` (e.g. (1333, 800)): bilinear for the image, nearest for masks.

    The image is rounded to whole values after interpolation, as the uint8 image MMDetection resizes
    would be; boxes are scaled per axis by new/old size and clipped to the new image.
    """

    def __init__(self, scale: tuple[int, int]):
        if len(scale) != 2 or min(scale) < 1:
            raise ValueError(f"Resize scale must be two positive sides like (1333, 800), got {scale!r}")
        self.scale = (int(scale[0]), int(scale[1]))

    def __repr__(self) -> str:
        return f"Resize(scale={self.scale})"

    def __call__(self, image: Tensor, target: dict[str, Tensor], meta: dict[str, Any],
                 generator: torch.Generator | None = None) -> Sample:
        height, width = image.shape[-2:]
        new_width, new_height, _ = rescale_size(width, height, self.scale)
        sx, sy = new_width / width, new_height / height
        target = dict(target)
        if (new_height, new_width) != (height, width):
            image = F.interpolate(image[None], size=(new_height, new_width), mode="bilinear",
                                  align_corners=False)[0].round_().clamp_(0, 255)
            if "masks" in target:
                target["masks"] = _resize_nearest(target["masks"], new_height, new_width)
            if "semantic_seg" in target:
                # Values fit in uint8 (0..255); nearest interpolation has no int64 kernel.
                semantic = target["semantic_seg"].to(torch.uint8)[None]
                target["semantic_seg"] = _resize_nearest(semantic, new_height, new_width)[0].long()
        if "boxes" in target:
            boxes = target["boxes"] * torch.tensor([sx, sy, sx, sy], dtype=target["boxes"].dtype)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_height)
            target["boxes"] = boxes
        prior_sx, prior_sy = meta.get("scale_factor", (1.0, 1.0))
        meta = dict(meta, img_shape=(new_height, new_width), scale_factor=(prior_sx * sx, prior_sy * sy))
        return image, target, meta


def _resize_nearest(planes: Tensor, height: int, width: int) -> Tensor:
    """Nearest-neighbour resize of `[N, H, W]` planes (OpenCV's INTER_NEAREST index rule)."""
    if planes.shape[0] == 0:
        return planes.new_zeros((0, height, width))
    return F.interpolate(planes[None], size=(height, width), mode="nearest")[0]


class RandomHorizontalFlip:
    """Mirror image, boxes, masks and semantic map left-right with probability `prob`."""

    def __init__(self, prob: float = 0.5):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {prob}")
        self.prob = prob

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(prob={self.prob})"

    def __call__(self, image: Tensor, target: dict[str, Tensor], meta: dict[str, Any],
                 generator: torch.Generator | None = None) -> Sample:
        flip = bool(torch.rand((), generator=generator) < self.prob)
        meta = dict(meta, flip=flip)
        if not flip:
            return image, target, meta
        return (*horizontal_flip(image, target), meta)


def horizontal_flip(image: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """The mirrored sample: x -> W - x for boxes (x1' = W - x2, x2' = W - x1), last axis reversed for maps."""
    width = image.shape[-1]
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"].clone()
        boxes[:, 0] = width - target["boxes"][:, 2]
        boxes[:, 2] = width - target["boxes"][:, 0]
        target["boxes"] = boxes
    for key in ("masks", "semantic_seg"):
        if key in target:
            target[key] = target[key].flip(-1)
    return image.flip(-1), target


class Compose:
    """Apply transforms in order, handing each the same generator."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"

    def __call__(self, image: Tensor, target: dict[str, Tensor], meta: dict[str, Any],
                 generator: torch.Generator | None = None) -> Sample:
        for transform in self.transforms:
            image, target, meta = transform(image, target, meta, generator)
        return image, target, meta


def build_transforms(*, train: bool, scale: tuple[int, int] | None = (1333, 800), flip_prob: float = 0.5) -> Compose:
    """The paper's pipeline: keep-ratio resize to `scale` (None: keep size), plus flip when `train`.

    Paper scale is (1333, 800); at smoke scale pass the synthetic image size (e.g. (256, 192)) or a
    smaller one. Evaluation uses the same resize without flip.
    """
    steps: list[Transform] = []
    if scale is not None:
        steps.append(Resize(scale))
    if train and flip_prob > 0:
        steps.append(RandomHorizontalFlip(flip_prob))
    return Compose(steps)
