"""Batch collation: images differ in size, so a batch stays a list; the model pads it itself."""
from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor


def collate(batch: Sequence[tuple[Tensor, dict[str, Tensor], dict[str, Any]]]
            ) -> tuple[list[Tensor], list[dict[str, Tensor]], list[dict[str, Any]]]:
    """`[(image, target, meta), ...]` -> `(images, targets, metas)`, three lists in batch order."""
    images, targets, metas = [], [], []
    for position, sample in enumerate(batch):
        if not isinstance(sample, (tuple, list)) or len(sample) != 3:
            raise TypeError(f"collate: batch[{position}] must be an (image, target, meta) triple as returned by "
                            f"CocoInstances, got {type(sample).__name__}")
        image, target, meta = sample
        images.append(image)
        targets.append(target)
        metas.append(meta)
    return images, targets, metas
