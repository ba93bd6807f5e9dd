"""CPU inference through oneDNN's own tensor format, for chains of convolutions without normalisation.

PyTorch's default CPU convolution already runs oneDNN's kernel, but converts its input to oneDNN's
blocked layout and the result back on every call. Keeping a whole chain (the mask branch's 4 or 12
convs, their ReLUs and residual sums) in that layout skips those conversions: about 20% off the mask
branch on a 2-core CPU. It is the *same* kernel with the same weights, so the result is bit-identical
to the default path (tests/test_model_cpu_inference.py checks it), which keeps the MMDetection equivalence intact.
Channels-last would be faster still but uses another kernel and changes the last bits.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

# conv -> ((weight address, version, shape), packed weight); kept outside the module so that copying or
# pickling a model never meets a oneDNN tensor
_PACKED: weakref.WeakKeyDictionary[nn.Conv2d, tuple[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()


def enabled(x: torch.Tensor) -> bool:
    """True where the oneDNN chain applies: float32 CPU inference (no autograd) with oneDNN built in."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def _packed_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The weight reordered once for oneDNN, re-made whenever the parameter changes (load, training)."""
    weight = conv.weight
    key = (weight.data_ptr(), weight._version, tuple(weight.shape))
    cached = _PACKED.get(conv)
    if cached is None or cached[0] != key:
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.detach().to_mkldnn(), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        cached = _PACKED[conv] = (key, packed)
    return cached[1]


def default_path_uses_onednn(conv: nn.Conv2d, shape: torch.Size) -> bool:
    """Whether PyTorch's own CPU float32 convolution would run oneDNN for this input shape (mirrors
    `use_mkldnn` in ATen's Convolution.cpp): small inputs and single-threaded 1x1 convs use ATen's
    native kernels instead, whose sums differ in the last bits."""
    n, c, h, w = shape
    kh, kw = conv.kernel_size
    strided_or_dilated = any(v != 1 for v in (*conv.stride, *conv.dilation))
    not_native_1x1 = strided_or_dilated or n >= 16 or (kh, kw) != (1, 1) or torch.get_num_threads() > 1
    big_enough = conv.groups > 1 or (kh > 3 and kw > 3) or n > 1 or n * c * h * w > 20480
    return not_native_1x1 and big_enough


def conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for an x already in oneDNN's layout (`x.to_mkldnn()`); the result stays in it.
    Where PyTorch would not use oneDNN itself, it takes PyTorch's path, so the bits never change."""
    if not default_path_uses_onednn(conv, x.shape):
        return conv(x.to_dense()).to_mkldnn()
    bias = conv.bias.detach() if conv.bias is not None else None
    return torch.mkldnn_convolution(x, _packed_weight(conv), bias, list(conv.padding), list(conv.stride),
                                    list(conv.dilation), conv.groups)
