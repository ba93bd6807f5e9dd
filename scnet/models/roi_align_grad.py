"""RoIAlign's input gradient on the CPU as two small matrix products per RoI.

torchvision's CPU backward walks every (RoI, channel, bin, sample point), recomputes the point's
bilinear weights for each channel and adds four scattered values: about 9x the forward and, with one
thread (as the smoke harness trains), a quarter to a third of a training step. Bilinear sampling is
separable: a sample's weight on feature pixel (h, w) is a(y, h) * b(x, w), and an output bin averages
grid_h x grid_w samples, so one RoI's pooled output is Ay @ F @ Ax^T with Ay [bins, H] and Ax [bins, W]
sparse, and its input gradient is Ay^T @ G @ Ax. Each RoI only touches a window of rows and columns
around itself, so the products are taken on that window and the windows are added into the gradient,
channels last, in one `index_add_`.

The sampling rules are torchvision's (aligned=True, adaptive sampling ratio): the same sample
positions, the same skipped samples (outside [-1, size]), the same clamping at the border. Only the
order of the sums differs, so the result equals torchvision's to float32 rounding (about 1e-7
relative), not bit for bit; it is deterministic on a given machine and thread count.
"""
from __future__ import annotations

import torch

# Rows of window x channels held at once: bounds the temporaries (64 MiB of float32) on large batches
# such as the train-step oracle's 2,000 RoIs of 256 channels.
_WINDOW_ELEMENTS = 1 << 24
# What one more chunk costs (about two dozen small ops), in window values computed and added.
_CHUNK_COST = 1 << 17


def _axis_weights(start: torch.Tensor, length: torch.Tensor, bins: int, size: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One axis of torchvision's sampling for every RoI: low/high pixel indices [R, bins, G], their
    weights [R, bins, G] (zero for skipped or padding samples), and the grid size per RoI [R]."""
    bin_size = length / bins
    grid = torch.ceil(length / bins).clamp(min=0).to(torch.int64)
    most = max(int(grid.max()), 1) if grid.numel() else 1
    grid_f = grid.to(start.dtype).clamp(min=1)[:, None, None]
    bin_index = torch.arange(bins, dtype=start.dtype)[None, :, None]
    sample_index = torch.arange(most, dtype=start.dtype)[None, None, :]
    # torchvision's expression and order: start + p * bin + (i + .5) * bin / grid
    pos = start[:, None, None] + bin_index * bin_size[:, None, None] + (sample_index + 0.5) * bin_size[:, None, None] / grid_f
    used = (torch.arange(most)[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    zero = torch.zeros((), dtype=pos.dtype)
    return low, high, torch.where(used, 1 - frac, zero), torch.where(used, frac, zero), grid


def _windows(low: torch.Tensor, high: torch.Tensor, weight_sum: torch.Tensor, size: int) -> torch.Tensor:
    """First and last pixel [R, 2] that a RoI's samples touch on one axis (0, 0 when none does)."""
    used = weight_sum > 0
    big = torch.full_like(low, size)
    first = torch.where(used, low, big).flatten(1).amin(dim=1)
    last = torch.where(used, high, torch.full_like(high, -1)).flatten(1).amax(dim=1)
    none = last < 0
    return torch.stack([torch.where(none, 0, first), torch.where(none, 0, last)], dim=1)


def _axis_matrix(low: torch.Tensor, high: torch.Tensor, w_low: torch.Tensor, w_high: torch.Tensor,
                 origin: torch.Tensor, extent: int) -> torch.Tensor:
    """[R, bins, extent]: the summed weights of each bin's samples on the window's pixels."""
    rois, bins, _ = low.shape
    out = w_low.new_zeros(rois, bins, extent)
    # Skipped and padding samples (zero weight) may lie outside the window: clamp them onto it.
    out.scatter_add_(2, (low - origin[:, None, None]).clamp(0, extent - 1), w_low)
    out.scatter_add_(2, (high - origin[:, None, None]).clamp(0, extent - 1), w_high)
    return out


def _chunks(row_extent: list[int], col_extent: list[int], channels: int
            ) -> list[tuple[torch.Tensor, int, int]]:
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
    return [(torch.tensor(m, dtype=torch.int64), t, w) for m, t, w in chunks]


def roi_align_input_grad(grad: torch.Tensor, rois: torch.Tensor, feature_shape: torch.Size | tuple[int, ...],
                         output_size: int, spatial_scale: float) -> torch.Tensor:
    """The gradient of torchvision's `roi_align(feature, rois, output_size, spatial_scale,
    sampling_ratio=0, aligned=True)` with respect to `feature` [B, C, H, W], given the output's
    gradient `grad` [R, C, output_size, output_size] and `rois` [R, 5] (image index, x1, y1, x2, y2)."""
    batch, channels, height, width = feature_shape
    out = grad.new_zeros(batch, height, width, channels)
    if rois.shape[0] == 0:
        return out.permute(0, 3, 1, 2).contiguous()
    scale = torch.tensor(spatial_scale, dtype=rois.dtype)
    x1, y1 = rois[:, 1] * scale - 0.5, rois[:, 2] * scale - 0.5
    x2, y2 = rois[:, 3] * scale - 0.5, rois[:, 4] * scale - 0.5
    ylow, yhigh, wy_low, wy_high, grid_h = _axis_weights(y1, y2 - y1, output_size, height)
    xlow, xhigh, wx_low, wx_high, grid_w = _axis_weights(x1, x2 - x1, output_size, width)
    count = (grid_h * grid_w).clamp(min=1).to(grad.dtype)
    rows = _windows(ylow, yhigh, wy_low + wy_high, height)
    cols = _windows(xlow, xhigh, wx_low + wx_high, width)
    row_extent = (rows[:, 1] - rows[:, 0] + 1).tolist()
    col_extent = (cols[:, 1] - cols[:, 0] + 1).tolist()
    flat = out.view(-1, channels)
    by_bin = grad.permute(0, 2, 3, 1)  # [R, bins_h, bins_w, C]: one gather per chunk makes it contiguous
    for chunk, tall, wide in _chunks(row_extent, col_extent, channels):
        _add_windows(flat, by_bin[chunk], rois[chunk, 0].to(torch.int64), count[chunk],
                     (ylow[chunk], yhigh[chunk], wy_low[chunk], wy_high[chunk]), rows[chunk, 0], tall, height,
                     (xlow[chunk], xhigh[chunk], wx_low[chunk], wx_high[chunk]), cols[chunk, 0], wide, width)
    return out.permute(0, 3, 1, 2).contiguous()


def _add_windows(flat: torch.Tensor, by_bin: torch.Tensor, image: torch.Tensor, count: torch.Tensor,
                 y_axis: tuple[torch.Tensor, ...], first_row: torch.Tensor, tall: int, height: int,
                 x_axis: tuple[torch.Tensor, ...], first_col: torch.Tensor, wide: int, width: int) -> None:
    """Add Ay^T @ G @ Ax / count of each RoI of a chunk (`by_bin` [R, bins_h, bins_w, C]) into `flat`
    ([B * H * W, C], channels last)."""
    rois, bins_h, _, channels = by_bin.shape
    # Windows of the chunk's common size, moved back inside the map where they would cross its edge:
    # every touched pixel stays inside, the extra ones get zero weight.
    row0 = torch.minimum(first_row, torch.tensor(height - tall))
    col0 = torch.minimum(first_col, torch.tensor(width - wide))
    along_y = _axis_matrix(*y_axis, row0, tall)  # [R, bins_h, tall]
    along_x = _axis_matrix(*x_axis, col0, wide) / count[:, None, None]  # [R, bins_w, wide]
    cols = torch.matmul(along_x.transpose(1, 2)[:, None], by_bin)  # [R, bins_h, wide, C]
    window = torch.bmm(along_y.transpose(1, 2), cols.view(rois, bins_h, wide * channels))  # [R, tall, wide * C]
    pixel_rows = (image * height + row0)[:, None] + torch.arange(tall)[None, :]  # [R, tall]
    pixels = (pixel_rows * width)[:, :, None] + (col0[:, None] + torch.arange(wide)[None, :])[:, None, :]
    flat.index_add_(0, pixels.flatten(), window.reshape(-1, channels))
