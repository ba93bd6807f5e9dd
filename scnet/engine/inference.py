"""Run a detector over a dataset: COCO results, detection IoUs, and the inference speed.

Each process takes every `world_size`-th image; rank 0 alone gathers the results (`gather_inference`).
Speed is measured as the paper does: one process, one device, batch 1, after `speed_warmup`
images. Where the evaluation itself ran that way, its own timings are used; otherwise rank 0 runs a
separate timed pass (`measure_speed`) while the other ranks wait, so that eight ranks sharing a node
(and a batch of several images) do not enter the figure. Time is the model's forward (including
mask pasting at the original size; excluding data loading and RLE encoding), synchronised on CUDA.
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

from scnet.engine import distributed, preemption
from scnet.engine.coco_eval import best_match_ious, detections_to_coco
from scnet.engine.data_order import ShardSampler


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
                  speed_warmup: int = 5, progress: bool = True, timed: bool = True) -> InferenceOutput:
    """This rank's share of the dataset; call `gather_inference` to combine ranks. With `timed`
    false the device is not synchronised around each batch and no speed is recorded."""
    rank, world = distributed.rank(), distributed.world_size()
    num_images = len(dataset) if max_images is None else min(max_images, len(dataset))
    sampler = ShardSampler(num_images, batch_size, rank=rank, world_size=world)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_fn,
                        pin_memory=device.type == "cuda", worker_init_fn=preemption.ignore_stop_signals,
                        generator=torch.Generator().manual_seed(0))
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
        batches = preemption.start_workers_deaf(loader)
        for images, _targets, metas in batches:
            images = _to_device(images, device)
            image_metas = [{"ori_shape": tuple(m["ori_shape"]), "scale_factor": tuple(m["scale_factor"])}
                           for m in metas]
            if timed:
                _synchronize(device)
            start = time.perf_counter()
            detections = model(images, image_metas=image_metas)
            if timed:
                _synchronize(device)
            elapsed = time.perf_counter() - start
            if timed and seen >= warmup:
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


def gather_inference(local: InferenceOutput) -> InferenceOutput | None:
    """All ranks' outputs merged on rank 0 (results in image order); None on the other ranks, which
    never hold the union. Speed fields are left to `measure_speed` when there are several ranks."""
    parts = distributed.gather_to_main(local)
    if parts is None:
        return None
    if len(parts) == 1:
        return local
    merged = InferenceOutput()
    for part in parts:
        merged.results.extend(part.results)
        merged.image_ids.extend(part.image_ids)
        merged.ious.extend(part.ious)
    merged.results.sort(key=lambda r: r["image_id"])
    return merged


@torch.no_grad()
def measure_speed(model: nn.Module, dataset: Any, *, collate_fn: Callable, device: torch.device,
                  num_images: int, warmup: int) -> tuple[int, float]:
    """(images timed, seconds) of `model` on the first `num_images` images, batch 1, in this process
    alone, after `warmup` untimed images (at least one image stays on the clock)."""
    num_images = min(num_images, len(dataset))
    warmup = min(warmup, max(0, num_images - 1))
    loader = DataLoader(dataset, batch_sampler=ShardSampler(num_images, 1, rank=0, world_size=1),
                        num_workers=0, collate_fn=collate_fn)
    was_training = model.training
    model.eval()
    timed_images, timed_seconds = 0, 0.0
    try:
        for seen, (images, _targets, metas) in enumerate(loader):
            images = _to_device(images, device)
            image_metas = [{"ori_shape": tuple(m["ori_shape"]), "scale_factor": tuple(m["scale_factor"])}
                           for m in metas]
            _synchronize(device)
            start = time.perf_counter()
            model(images, image_metas=image_metas)
            _synchronize(device)
            if seen >= warmup:
                timed_images += len(images)
                timed_seconds += time.perf_counter() - start
    finally:
        model.train(was_training)
    return timed_images, timed_seconds
