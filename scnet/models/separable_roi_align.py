"""RoIAlign's input gradient on the CPU as two small matrix products per RoI.

torchvision's CPU kernels walk every (RoI, channel, bin, sample point) in scalar code; its backward
also recomputes each point's bilinear weights for every channel and ran at about 9x the forward, a
quarter to a third of a one-thread smoke training step. Bilinear sampling is separable: a sample's
weight on feature pixel (h, w) is a(y, h) * b(x, w), and an output bin averages grid_h x grid_w
samples, so one RoI's pooled output is Ay @ F @ Ax^T / count with Ay [bins, H] and Ax [bins, W] sparse,
and its input gradient is Ay^T @ G @ Ax / count. A RoI only touches a window of rows and columns
around itself, so the products are taken on that window, for chunks of RoIs with similar windows, and
the windows are added into the gradient (channels last) with one `index_add_` per chunk.

The same products give the forward (Ay @ F_window @ Ax^T), but torchvision's forward already computes
each sample's weights once for all channels, and the separable one was no faster there (measured at
1 and 2 threads on smoke and R50 shapes), so the forward stays torchvision's, bit for bit.

The sampling rules are torchvision's (aligned=True, adaptive sampling ratio): the same sample
positions, the same skipped samples (outside [-1, size]), the same clamping at the border. Only the
order of the sums differs, so the gradient equals torchvision's to float32 rounding (about 1e-7
relative), not bit for bit; it is deterministic on a given machine and thread count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

# Window values (RoIs x window pixels x channels) held at once: bounds the temporaries (64 MiB of
# float32) on large batches such as the train-step oracle's 2,000 RoIs of 256 channels.
_WINDOW_ELEMENTS = 1 << 24
# What one more chunk costs (about two dozen small ops), in window values computed and added.
_CHUNK_COST = 1 << 17


@dataclass(frozen=True)
class _Axis:
    """One axis of torchvision's sampling for every RoI: low/high pixel indices [R, bins, G], their
    weights [R, bins, G] (zero for skipped and padding samples), the grid size [R] and the first and
    last pixel touched [R, 2]."""

    low: torch.Tensor
    high: torch.Tensor
    w_low: torch.Tensor
    w_high: torch.Tensor
    grid: torch.Tensor
    span: torch.Tensor

    def matrix(self, chunk: torch.Tensor, origin: torch.Tensor, extent: int) -> torch.Tensor:
        """[n, bins, extent]: the summed weights of each bin's samples on the chunk's window pixels."""
        low, high = self.low[chunk] - origin[:, None, None], self.high[chunk] - origin[:, None, None]
        w_low, w_high = self.w_low[chunk], self.w_high[chunk]
        out = w_low.new_zeros(low.shape[0], low.shape[1], extent)
        # Skipped and padding samples (zero weight) may lie outside the window: clamp them onto it.
        out.scatter_add_(2, low.clamp(0, extent - 1), w_low)
        out.scatter_add_(2, high.clamp(0, extent - 1), w_high)
        return out


def _axis(start: torch.Tensor, length: torch.Tensor, bins: int, size: int) -> _Axis:
    bin_size = length / bins
    grid = torch.ceil(length / bins).clamp(min=0).to(torch.int64)
    most = max(int(grid.max()), 1) if grid.numel() else 1
    grid_f = grid.to(start.dtype).clamp(min=1)[:, None, None]
    bin_index = torch.arange(bins, dtype=start.dtype)[None, :, None]
    sample_index = torch.arange(most, dtype=start.dtype)[None, None, :]
    # torchvision's expression and order: start + p * bin + (i + .5) * bin / grid
    pos = (start[:, None, None] + bin_index * bin_size[:, None, None]
           + (sample_index + 0.5) * bin_size[:, None, None] / grid_f)
    used = (torch.arange(most)[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(pos), pos - low.to(pos.dtype))
    zero = torch.zeros((), dtype=pos.dtype)
    first = torch.where(used, low, torch.full_like(low, size)).flatten(1).amin(dim=1)
    last = torch.where(used, high, torch.full_like(high, -1)).flatten(1).amax(dim=1)
    none = last < 0
    span = torch.stack([torch.where(none, 0, first), torch.where(none, 0, last)], dim=1)
    return _Axis(low, high, torch.where(used, 1 - frac, zero), torch.where(used, frac, zero), grid, span)


@dataclass(frozen=True)
class _Chunk:
    """RoIs sharing one window size: their indices, Ay [n, bins, tall], Ax / count [n, bins, wide]
    and the window's pixels as rows of the channels-last map [n, tall, wide]."""

    rois: torch.Tensor
    along_y: torch.Tensor
    along_x: torch.Tensor
    pixels: torch.Tensor


def _chunk_rois(row_extent: list[int], col_extent: list[int], channels: int) -> list[tuple[list[int], int, int]]:
    """RoIs grouped into chunks that share one window size (the largest of the chunk). Padding a RoI
    to a larger window costs products and adds, a new chunk costs a few dozen small ops: RoIs are
    taken by window area and a chunk is closed when padding would cost more than starting anew, or
    when it holds _WINDOW_ELEMENTS window values."""
    order = sorted(range(len(row_extent)), key=lambda r: (row_extent[r] * col_extent[r], row_extent[r]))
    chunks: list[tuple[list[int], int, int]] = []
    members: list[int] = []
    tall = wide = 0
    for roi in order:
        t, w = max(tall, row_extent[roi]), max(wide, col_extent[roi])
        padded = (len(members) + 1) * t * w * channels
        unpadded = (len(members) * tall * wide + row_extent[roi] * col_extent[roi]) * channels
        if members and (padded - unpadded > _CHUNK_COST or padded > _WINDOW_ELEMENTS):
            chunks.append((members, tall, wide))
            members, t, w = [], row_extent[roi], col_extent[roi]
        members.append(roi)
        tall, wide = t, w
    if members:
        chunks.append((members, tall, wide))
    return chunks


def _chunks(rois: torch.Tensor, feature_shape: tuple[int, ...], output_size: int, spatial_scale: float
            ) -> Iterator[_Chunk]:
    _, channels, height, width = feature_shape
    scale = torch.tensor(spatial_scale, dtype=rois.dtype)
    x1, y1 = rois[:, 1] * scale - 0.5, rois[:, 2] * scale - 0.5
    x2, y2 = rois[:, 3] * scale - 0.5, rois[:, 4] * scale - 0.5
    y_axis, x_axis = _axis(y1, y2 - y1, output_size, height), _axis(x1, x2 - x1, output_size, width)
    count = (y_axis.grid * x_axis.grid).clamp(min=1).to(rois.dtype)
    row_extent = (y_axis.span[:, 1] - y_axis.span[:, 0] + 1).tolist()
    col_extent = (x_axis.span[:, 1] - x_axis.span[:, 0] + 1).tolist()
    image = rois[:, 0].to(torch.int64)
    for members, tall, wide in _chunk_rois(row_extent, col_extent, channels):
        chunk = torch.tensor(members, dtype=torch.int64)
        # Windows of the chunk's common size, moved back inside the map where they would cross its
        # edge: every touched pixel stays inside, the extra ones get zero weight.
        row0 = torch.minimum(y_axis.span[chunk, 0], torch.tensor(height - tall))
        col0 = torch.minimum(x_axis.span[chunk, 0], torch.tensor(width - wide))
        pixel_rows = (image[chunk] * height + row0)[:, None] + torch.arange(tall)[None, :]  # [n, tall]
        pixels = (pixel_rows * width)[:, :, None] + (col0[:, None] + torch.arange(wide)[None, :])[:, None, :]
        yield _Chunk(chunk, y_axis.matrix(chunk, row0, tall),
                     x_axis.matrix(chunk, col0, wide) / count[chunk, None, None], pixels)


def roi_align_input_grad(grad: torch.Tensor, rois: torch.Tensor, feature_shape: torch.Size | tuple[int, ...],
                         output_size: int, spatial_scale: float) -> torch.Tensor:
    """The gradient of torchvision's `roi_align(feature, rois, output_size, spatial_scale,
    sampling_ratio=0, aligned=True)` with respect to `feature` [B, C, H, W], given the output's
    gradient `grad` [R, C, output_size, output_size] and `rois` [R, 5]."""
    batch, channels, height, width = feature_shape
    out = grad.new_zeros(batch, height, width, channels)
    if rois.shape[0] == 0:
        return out.permute(0, 3, 1, 2).contiguous()
    flat = out.view(-1, channels)
    by_bin = grad.permute(0, 2, 3, 1)  # [R, bins_h, bins_w, C]: one gather per chunk makes it contiguous
    for chunk in _chunks(rois, tuple(feature_shape), output_size, spatial_scale):
        n, tall, wide = chunk.pixels.shape
        cols = torch.matmul(chunk.along_x.transpose(1, 2)[:, None], by_bin[chunk.rois])  # [n, bins, wide, C]
        window = torch.bmm(chunk.along_y.transpose(1, 2), cols.view(n, output_size, wide * channels))
        flat.index_add_(0, chunk.pixels.flatten(), window.view(-1, channels))  # [n, tall, wide * C]
    return out.permute(0, 3, 1, 2).contiguous()
