"""Run a detector over a dataset: COCO results, detection IoUs, and the inference speed.

Each process takes every `world_size`-th image; rank 0 gathers the results. Speed is the model's
forward time (including mask pasting at the original size, excluding data loading and RLE
encoding), measured after `speed_warmup` images and synchronised on CUDA.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from scnet.engine import distributed
from scnet.engine.coco_eval import best_match_ious, detections_to_coco
from scnet.engine.sampling import ShardSampler


@dataclass
class InferenceOutput:
    results: list[dict[str, Any]] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)
    ious: list[np.ndarray] = field(default_factory=list)
    timed_images: int = 0
    timed_seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.timed_images / self.timed_seconds if self.timed_seconds > 0 else 0.0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_device(images: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [image.to(device, non_blocking=True) for image in images]


@torch.no_grad()
def run_inference(model: nn.Module, dataset: Any, *, collate_fn: Callable, device: torch.device,
                  batch_size: int = 1, num_workers: int = 0, max_images: int | None = None,
                  speed_warmup: int = 5, progress: bool = True) -> InferenceOutput:
    """This rank's share of the dataset; call `gather_inference` to combine ranks."""
    rank, world = distributed.rank(), distributed.world_size()
    num_images = len(dataset) if max_images is None else min(max_images, len(dataset))
    sampler = ShardSampler(num_images, batch_size, rank=rank, world_size=world)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_fn,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
    label_to_category_id = list(dataset.label_to_category_id)
    local_images = len(sampler.indices)
    # Leave at least one batch on the clock even for tiny evaluation sets.
    warmup = min(speed_warmup, max(0, local_images - batch_size))
    was_training = model.training
    model.eval()
    out = InferenceOutput()
    seen = 0
    bar = tqdm(total=local_images, desc="eval", unit="img", disable=not progress or rank != 0,
               dynamic_ncols=True)
    try:
        for images, _targets, metas in loader:
            images = _to_device(images, device)
            image_metas = [{"ori_shape": tuple(m["ori_shape"]), "scale_factor": tuple(m["scale_factor"])}
                           for m in metas]
            _synchronize(device)
            start = time.perf_counter()
            detections = model(images, image_metas=image_metas)
            _synchronize(device)
            elapsed = time.perf_counter() - start
            if seen >= warmup:
                out.timed_images += len(images)
                out.timed_seconds += elapsed
            seen += len(images)
            for detection, meta in zip(detections, metas):
                image_id = int(meta["image_id"])
                rows = detections_to_coco(detection, image_id, label_to_category_id)
                out.results.extend(rows)
                out.image_ids.append(image_id)
                out.ious.append(best_match_ious(rows, dataset.coco, image_id))
            bar.update(len(images))
    finally:
        bar.close()
        model.train(was_training)
    return out


def gather_inference(local: InferenceOutput) -> InferenceOutput:
    """All ranks' outputs on every rank (results in image order); speed = mean of per-process speeds."""
    parts = distributed.all_gather_objects(local)
    if len(parts) == 1:
        return local
    merged = InferenceOutput()
    for part in parts:
        merged.results.extend(part.results)
        merged.image_ids.extend(part.image_ids)
        merged.ious.extend(part.ious)
    merged.results.sort(key=lambda r: r["image_id"])
    speeds = [p.images_per_s for p in parts if p.timed_seconds > 0]
    merged.timed_images = sum(p.timed_images for p in parts)
    # Keep images/s per process (per GPU), the unit the paper reports.
    merged.timed_seconds = merged.timed_images / (sum(speeds) / len(speeds)) if speeds else 0.0
    return merged
