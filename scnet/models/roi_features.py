"""RoIAlign over the FPN level that matches each box's scale (MMDetection's SingleRoIExtractor:
level = floor(log2(sqrt(area) / 56)), clamped to P2-P5; aligned=True, adaptive sampling).

On the CPU the forward is torchvision's, split over a small thread pool by RoIs when torch has more
than one thread (the op releases the GIL; each output RoI is computed alone, so every number is
torchvision's, bit for bit). The backward is `separable_roi_align.roi_align_input_grad`: torchvision's CPU
backward recomputes the sampling geometry for every channel and ran at about 9x the forward, a quarter
to a third of a one-thread smoke training step; the separable form gives the same gradient to float32
rounding at a third to a seventh of the time. CUDA uses torchvision's kernels, forward and backward.
"""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torchvision.ops import roi_align

from scnet.models.separable_roi_align import roi_align_input_grad

FEATURE_STRIDES = (4, 8, 16, 32)
_FINEST_SCALE = 56
_MIN_ROIS_PER_THREAD = 8
_FEW_ROIS = 8  # below this the backward is torchvision's own
# The separable backward reads window sizes on the host: right for a CPU, but a GPU's path is
# torchvision's kernel, and benchmarks/sync_points.py turns this off to count what a GPU would do.
CPU_SEPARABLE_BACKWARD = True
_POOL: ThreadPoolExecutor | None = None


def boxes_to_rois(boxes: list[torch.Tensor]) -> torch.Tensor:
    """[sum K, 5] rows of (image index, x1, y1, x2, y2)."""
    rows = [torch.cat([b.new_full((b.shape[0], 1), i), b[:, :4]], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rows) if rows else torch.zeros(0, 5)


def image_blocks(counts: list[int]) -> list[tuple[int, int]]:
    """(start, stop) of each image's rows in RoIs stacked image after image, from the images' counts."""
    stops = list(itertools.accumulate(counts))
    return list(zip([0, *stops[:-1]], stops))


def roi_levels(rois: torch.Tensor, num_levels: int) -> torch.Tensor:
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    return torch.floor(torch.log2(scale / _FINEST_SCALE + 1e-6)).clamp(min=0, max=num_levels - 1).long()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(torch.get_num_threads(), 1), thread_name_prefix="roi_align")
    return _POOL


def _split_over_threads(feature: torch.Tensor, rois: torch.Tensor) -> bool:
    return (feature.device.type == "cpu" and torch.get_num_threads() > 1
            and rois.shape[0] >= 2 * _MIN_ROIS_PER_THREAD)


def _torchvision_forward(feature: torch.Tensor, rois: torch.Tensor, size: int, scale: float) -> torch.Tensor:
    return torch.ops.torchvision.roi_align(feature, rois, scale, size, size, 0, True)


def _cpu_forward(feature: torch.Tensor, rois: torch.Tensor, size: int, scale: float) -> torch.Tensor:
    """torchvision's CPU forward, split over threads by RoIs when torch has several."""
    if not _split_over_threads(feature, rois):
        return _torchvision_forward(feature, rois, size, scale)
    threads = torch.get_num_threads()
    # Strided shares, not contiguous chunks: proposals come sorted by score and the large, costly RoIs
    # bunch together, so contiguous chunks leave one thread with most of the work.
    shares = [rois[t::threads] for t in range(threads)]
    parts = list(_pool().map(lambda r: _torchvision_forward(feature, r, size, scale), shares))
    out = parts[0].new_empty(rois.shape[0], *parts[0].shape[1:])
    for t, part in enumerate(parts):
        out[t::threads] = part
    return out


class _CpuRoIAlign(torch.autograd.Function):
    """torchvision's RoIAlign forward (aligned, adaptive sampling; split over threads by RoIs when
    there are several) with the separable CPU backward."""

    @staticmethod
    def forward(ctx, feature: torch.Tensor, rois: torch.Tensor, size: int, scale: float) -> torch.Tensor:
        ctx.save_for_backward(rois)
        ctx.size, ctx.scale, ctx.feature_shape = size, scale, feature.shape
        return _cpu_forward(feature, rois, size, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rois,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        if rois.shape[0] < _FEW_ROIS or not CPU_SEPARABLE_BACKWARD:
            # torchvision's loop: cheap for a few RoIs (no channels-last copy), and a GPU's path
            batch, channels, height, width = ctx.feature_shape
            return torch.ops.torchvision._roi_align_backward(
                grad, rois, ctx.scale, ctx.size, ctx.size, batch, channels, height, width, 0, True), None, None, None
        return roi_align_input_grad(grad, rois, ctx.feature_shape, ctx.size, ctx.scale), None, None, None


def _roi_align(feature: torch.Tensor, rois: torch.Tensor, size: int, scale: float) -> torch.Tensor:
    if feature.device.type != "cpu":
        return roi_align(feature, rois, size, spatial_scale=scale, sampling_ratio=0, aligned=True)
    if feature.requires_grad and torch.is_grad_enabled():
        return _CpuRoIAlign.apply(feature, rois, size, scale)
    return _cpu_forward(feature, rois, size, scale)


@dataclass(frozen=True)
class LevelSplit:
    """RoIs grouped by FPN level: `order` lists the RoI indices level by level (ascending within a
    level), `counts` how many each level has."""

    order: torch.Tensor
    counts: list[int]


def split_by_level(rois: torch.Tensor, num_levels: int = len(FEATURE_STRIDES)) -> LevelSplit:
    """One sort and one host read of the level sizes; reusable for every pooling of the same RoIs."""
    levels = roi_levels(rois, num_levels)
    order = torch.sort(levels, stable=True).indices
    per_level = levels[None, :] == torch.arange(num_levels, device=levels.device)[:, None]
    return LevelSplit(order, per_level.sum(dim=1).tolist())


def multilevel_roi_align(features: list[torch.Tensor], rois: torch.Tensor, output_size: int,
                         split: LevelSplit | None = None) -> torch.Tensor:
    features = features[: len(FEATURE_STRIDES)]
    channels = features[0].shape[1]
    out = features[0].new_empty(rois.shape[0], channels, output_size, output_size)
    if rois.shape[0] == 0:
        return out
    if split is None:
        split = split_by_level(rois, len(features))
    start = 0
    for feature, stride, count in zip(features, FEATURE_STRIDES, split.counts):
        if count:
            index = split.order[start:start + count]
            out[index] = _roi_align(feature, rois[index], output_size, 1.0 / stride)
        start += count
    return out


def single_level_roi_align(feature: torch.Tensor, rois: torch.Tensor, output_size: int,
                           stride: int) -> torch.Tensor:
    return _roi_align(feature, rois, output_size, 1.0 / stride)
