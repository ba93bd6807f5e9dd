"""The separable CPU RoIAlign backward (scnet.models.separable_roi_align) is torchvision's gradient:
against torchvision's own backward on RoIs that hit every sampling rule (skipped samples beyond
[-1, size], clamping at the border, degenerate boxes, boxes larger than the map, two images), against
finite differences of torchvision's forward in float64, and unchanged when the work is cut into many
chunks."""
from __future__ import annotations

import pytest
import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision)

from scnet.models import separable_roi_align
from scnet.models.separable_roi_align import roi_align_input_grad


def _rois(count: int, image_w: float, image_h: float, images: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x1 = torch.rand(count, generator=gen) * image_w * 1.2 - 0.1 * image_w
    y1 = torch.rand(count, generator=gen) * image_h * 1.2 - 0.1 * image_h
    w = torch.rand(count, generator=gen) ** 2 * image_w * 0.7
    h = torch.rand(count, generator=gen) ** 2 * image_h * 0.7
    index = torch.randint(0, images, (count,), generator=gen).float()
    rois = torch.stack([index, x1, y1, x1 + w, y1 + h], dim=1)
    rois[0, 1:] = torch.tensor([5.0, 5.0, 2.0, 9.0])  # x2 < x1: a negative width, no samples
    rois[1, 1:] = torch.tensor([3.0, 3.0, 3.0, 3.0])  # a point
    rois[2, 1:] = torch.tensor([image_w - 3, image_h - 3, image_w + 40, image_h + 60])  # beyond the far edge
    rois[3, 1:] = torch.tensor([-50.0, -70.0, 4.0, 6.0])  # beyond the near edge: skipped samples
    rois[4, 1:] = torch.tensor([-10.0, -10.0, image_w + 10, image_h + 10])  # the whole map and more
    rois[5, 1:] = torch.tensor([image_w - 1.0, 0.0, image_w - 0.2, image_h - 0.5])  # a sliver at the edge
    return rois.to(dtype)


def _torchvision_grad(grad: torch.Tensor, rois: torch.Tensor, shape, size: int, scale: float) -> torch.Tensor:
    batch, channels, height, width = shape
    return torch.ops.torchvision._roi_align_backward(grad, rois, scale, size, size, batch, channels, height, width,
                                                     0, True)


@pytest.mark.parametrize("size,stride,channels", [(7, 4, 8), (14, 8, 5), (7, 32, 3)])
def test_equals_torchvisions_backward_to_float32_rounding(size, stride, channels):
    shape = (2, channels, 96 // stride + 3, 128 // stride + 1)
    rois = _rois(80, 128.0, 96.0, images=2, seed=size + stride)
    grad = torch.randn(rois.shape[0], channels, size, size, generator=torch.Generator().manual_seed(1))
    expected = _torchvision_grad(grad, rois, shape, size, 1.0 / stride)
    got = roi_align_input_grad(grad, rois, shape, size, 1.0 / stride)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6 * expected.abs().max())
    assert expected.abs().max() > 0


def test_float64_gradient_matches_finite_differences_of_torchvisions_forward():
    rois = _rois(14, 40.0, 32.0, images=2, seed=3, dtype=torch.float64)
    feature = torch.randn(2, 3, 9, 11, dtype=torch.float64, requires_grad=True)

    class Pool(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.ops.torchvision.roi_align(x, rois, 0.25, 5, 5, 0, True)

        @staticmethod
        def backward(ctx, grad):
            return roi_align_input_grad(grad, rois, feature.shape, 5, 0.25)

    assert torch.autograd.gradcheck(Pool.apply, (feature,))


def test_many_small_chunks_give_the_same_gradient(monkeypatch):
    shape = (2, 4, 24, 32)
    rois = _rois(60, 128.0, 96.0, images=2, seed=7)
    grad = torch.randn(rois.shape[0], 4, 7, 7, generator=torch.Generator().manual_seed(2))
    whole = roi_align_input_grad(grad, rois, shape, 7, 0.25)
    monkeypatch.setattr(separable_roi_align, "_WINDOW_ELEMENTS", 1)  # one RoI per chunk
    monkeypatch.setattr(separable_roi_align, "_CHUNK_COST", 0)
    assert len(separable_roi_align._chunk_rois([3, 4, 5], [5, 4, 3], 4)) == 3
    torch.testing.assert_close(roi_align_input_grad(grad, rois, shape, 7, 0.25), whole, rtol=0, atol=1e-6)


def test_no_rois_give_a_zero_gradient():
    grad = roi_align_input_grad(torch.zeros(0, 3, 7, 7), torch.zeros(0, 5), (2, 3, 8, 9), 7, 0.25)
    assert grad.shape == (2, 3, 8, 9) and not grad.any()

