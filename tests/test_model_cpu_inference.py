"""The CPU inference shortcuts must give exactly the default path's numbers.

The MMDetection equivalence (tests/test_model_mmdet.py) is bit-exact at 2 threads; these shortcuts
(oneDNN conv chains, a channels-last deconvolution, RoIAlign split across threads, a shared semantic
RoIAlign) may only save time. Each test runs a part once with autograd on, which takes the default
path, and once under no_grad, which takes the shortcut, and asks for identical tensors.
"""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from scnet.models import onednn
from scnet.models.mask_head import MaskHead
from scnet.models.roi_features import multilevel_roi_align, single_level_roi_align
from scnet.models.rpn import RPN

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn)")


def _default_and_shortcut(fn, *args):
    with torch.enable_grad():
        default = fn(*args)
    with torch.no_grad():
        shortcut = fn(*args)
    return default, shortcut


def _detached(out):
    if isinstance(out, (tuple, list)):
        return [_detached(o) for o in out]
    return out.detach()


@pytest.mark.parametrize("residual,convs,flow", [(True, 4, False), (False, 4, False), (False, 2, True)])
def test_mask_head_shortcut_is_bit_identical(residual, convs, flow):
    torch.manual_seed(0)
    head = MaskHead(channels=32, num_convs=convs, num_classes=5, residual=residual, feature_flow=flow).eval()
    x = torch.randn(6, 32, 14, 14)
    previous = torch.randn(6, 32, 14, 14) if flow else None
    default, shortcut = _default_and_shortcut(lambda: head(x, previous))
    assert default.requires_grad and not shortcut.requires_grad  # the two paths really differ
    assert torch.equal(default.detach(), shortcut)


def test_rpn_head_shortcut_is_bit_identical():
    torch.manual_seed(0)
    rpn = RPN(32, bbox_loss="l1", train_pre_nms=100, train_post_nms=50, test_pre_nms=100,
              test_post_nms=50).eval()
    features = [torch.randn(1, 32, s, s + 3) for s in (32, 16, 8, 4, 2)]
    default, shortcut = _default_and_shortcut(rpn.head, features)
    for d, s in zip(_detached(default[0] + default[1]), shortcut[0] + shortcut[1]):
        assert torch.equal(d, s)


@pytest.mark.parametrize("threads", [1, 2])
def test_single_convs_match_pytorch_for_small_and_large_inputs(threads):
    """PyTorch runs small inputs and single-threaded 1x1 convs on its native kernels; the shortcut must
    follow it there too."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        for channels in (8, 64, 256):
            for kernel in (1, 3):
                for n, size in ((1, 10), (1, 40), (6, 14), (20, 7)):
                    conv = torch.nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
                    x = torch.randn(n, channels, size, size)
                    with torch.no_grad():
                        assert torch.equal(onednn.conv2d(conv, x.to_mkldnn()).to_dense(), conv(x)), \
                            (channels, kernel, n, size)
    finally:
        torch.set_num_threads(previous)


def test_packed_weight_follows_parameter_changes():
    """A weight loaded or trained after the first call must not leave a stale packed copy behind."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 40, 40)
    assert onednn.default_path_uses_onednn(conv, x.shape)  # so the packed weight is really used
    with torch.no_grad():
        first = onednn.conv2d(conv, x.to_mkldnn()).to_dense()
        conv.weight.mul_(2.0)
        second = onednn.conv2d(conv, x.to_mkldnn()).to_dense()
        assert torch.equal(second, conv(x))
        assert not torch.equal(first, second)


def test_model_copies_after_cpu_inference():
    """The packed weights live outside the modules, so a model that has run inference still deep-copies."""
    import copy

    torch.manual_seed(0)
    head = MaskHead(channels=32, num_convs=4, num_classes=5, residual=True).eval()
    with torch.no_grad():
        head(torch.randn(20, 32, 14, 14))
    clone = copy.deepcopy(head)
    x = torch.randn(20, 32, 14, 14)
    with torch.no_grad():
        assert torch.equal(clone(x), head(x))


def _roi_align_pass(fn, features: list[torch.Tensor], threads: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and input gradients (for a fixed, uneven output gradient) of `fn` on `threads` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        leaves = [f.clone().requires_grad_() for f in features]
        out = fn(leaves)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        out.backward(upstream)
        return out.detach(), [leaf.grad for leaf in leaves]
    finally:
        torch.set_num_threads(previous)


def test_threaded_roi_align_forward_is_torchvisions_bit_for_bit_and_its_gradient_torchvisions_to_rounding():
    """RoIs are shared out across threads in the forward (large ones interleaved with small ones); one
    thread is torchvision's own kernel. The backward is the separable one (tests/test_separable_roi_align.py)
    at every thread count: torchvision's gradient to float32 rounding."""
    torch.manual_seed(0)
    features = [torch.randn(2, 16, 64 // 2 ** i, 96 // 2 ** i) for i in range(4)]
    xy = torch.rand(300, 2) * 200
    wh = torch.rand(300, 2) * 150 + 2
    rois = torch.cat([torch.randint(0, 2, (300, 1)).float(), xy, xy + wh], dim=1)
    rois = rois[torch.argsort(wh.prod(1), descending=True)]  # like score-sorted proposals: costly ones first
    cases = {"multilevel": lambda fs: multilevel_roi_align(fs, rois, 7),
             "single level": lambda fs: single_level_roi_align(fs[1], rois, 14, 8),
             "strided output gradient": lambda fs: single_level_roi_align(fs[1], rois, 14, 8)[:, :, ::2, ::2]}
    references = {"multilevel": None,
                  "single level": lambda fs: roi_align(fs[1], rois, 14, spatial_scale=1 / 8, sampling_ratio=0,
                                                       aligned=True),
                  "strided output gradient": lambda fs: roi_align(fs[1], rois, 14, spatial_scale=1 / 8,
                                                                  sampling_ratio=0, aligned=True)[:, :, ::2, ::2]}
    for name, fn in cases.items():
        out, grads = _roi_align_pass(fn, features, threads=1)
        if references[name] is not None:
            reference_out, reference_grads = _roi_align_pass(references[name], features, threads=1)
            assert torch.equal(out, reference_out), name
            torch.testing.assert_close(grads[1], reference_grads[1], rtol=0, atol=1e-5 * reference_grads[1].abs().max())
        for threads in (2, 3):
            threaded_out, threaded_grads = _roi_align_pass(fn, features, threads)
            assert torch.equal(out, threaded_out), (name, threads)
            for level, (grad, threaded) in enumerate(zip(grads, threaded_grads)):
                assert (grad is None) == (threaded is None), (name, threads, level)
                if grad is not None:
                    torch.testing.assert_close(threaded, grad, rtol=0, atol=1e-5 * grad.abs().max())
        assert grads[1].abs().sum() > 0
