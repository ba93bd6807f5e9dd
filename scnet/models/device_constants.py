"""Small constant tensors (box-coder standard deviations, base anchors) made once per device and
dtype: built from a Python list on every call, each would be a host-to-device copy, which waits for
the device on a GPU."""
from __future__ import annotations

from typing import Callable

import torch

_CACHE: dict[tuple, torch.Tensor] = {}


def device_constant(values: tuple, like: torch.Tensor) -> torch.Tensor:
    """`torch.tensor(values)` on `like`'s device and dtype, made once."""
    return cached(("values", values), lambda: torch.tensor(values, dtype=like.dtype), like.device, like.dtype)


def cached(key: tuple, make: Callable[[], torch.Tensor], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`make()` (a CPU tensor) moved to `device` and `dtype` the first time `key` is asked for there."""
    full_key = (key, str(device), dtype)
    tensor = _CACHE.get(full_key)
    if tensor is None:
        # made outside inference mode, so that a constant first asked for at evaluation can still be
        # saved for backward by a later training step
        with torch.inference_mode(False), torch.no_grad():
            tensor = make().to(device=device, dtype=dtype)
        _CACHE[full_key] = tensor
    return tensor
