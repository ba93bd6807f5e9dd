"""Which float32 arithmetic CUDA uses: PyTorch's defaults (the runs' default) or strict IEEE float32.

On Ampere and later cards PyTorch lets cuDNN run float32 convolutions in TF32 (10-bit mantissa)
unless told otherwise, while float32 matrix multiplies stay IEEE float32. MMDetection 3.3.0 keeps
these defaults (mmengine never touches the flags), so a run that is compared with its model zoo on
the same card does the same: that is the default mode here, set explicitly rather than inherited,
so a later change of PyTorch's defaults or an earlier caller in the same process cannot move it.
`RunConfig.strict_fp32` asks for IEEE float32 everywhere instead (the paper's V100s had no TF32);
it changes the numbers, so it is part of the run id. The settings in force go into env.json.

torch 2.9 added per-backend `fp32_precision` flags and refuses to read the legacy `allow_tf32`
flags once they have been used; the new flags are used where they exist, the legacy ones before.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_NEW_API = hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision")


def _flags() -> list[tuple[Any, str]]:
    """(object, attribute) of every new-API flag this module sets."""
    return [(torch.backends.cudnn.conv, "fp32_precision"), (torch.backends.cudnn.rnn, "fp32_precision"),
            (torch.backends.cuda.matmul, "fp32_precision")]


def apply_float32_mode(strict: bool) -> None:
    """Strict: IEEE float32 for convolutions and matrix multiplies. Otherwise PyTorch's defaults,
    as MMDetection 3.3.0 runs them: TF32 convolutions (on cards that have TF32), IEEE matmuls."""
    conv = "ieee" if strict else "tf32"
    if _NEW_API:
        torch.backends.cudnn.conv.fp32_precision = conv
        torch.backends.cudnn.rnn.fp32_precision = conv
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = not strict
        torch.backends.cuda.matmul.allow_tf32 = False


@contextmanager
def float32_mode(strict: bool) -> Iterator[None]:
    """Run a block in one mode and put the previous flags back (gpu_check's CUDA-versus-CPU rows)."""
    if _NEW_API:
        saved: list[Any] = [getattr(owner, name) for owner, name in _flags()]
    else:
        saved = [torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32]
    apply_float32_mode(strict)
    try:
        yield
    finally:
        if _NEW_API:
            for (owner, name), value in zip(_flags(), saved):
                setattr(owner, name, value)
        else:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def float32_settings() -> dict[str, Any]:
    """The flags in force, for env.json and gpu_check's header: whether cuDNN convolutions may use
    TF32, the matmul precision, and cuDNN's own switches."""
    if _NEW_API:
        conv = torch.backends.cudnn.conv.fp32_precision
        matmul = torch.backends.cuda.matmul.fp32_precision
        cudnn_tf32 = conv == "tf32"
        matmul_tf32 = matmul == "tf32" or (matmul == "none" and torch.get_float32_matmul_precision() != "highest")
    else:
        conv = matmul = None
        cudnn_tf32 = bool(torch.backends.cudnn.allow_tf32)
        matmul_tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
    if not cudnn_tf32 and not matmul_tf32:
        mode = "strict fp32"
    elif cudnn_tf32 and not matmul_tf32:
        mode = "pytorch defaults (TF32 convolutions)"
    else:
        mode = "TF32 matmuls too (neither mode of this project)"
    return {"mode": mode, "cudnn_allow_tf32": cudnn_tf32, "cudnn_conv_fp32_precision": conv,
            "matmul_allow_tf32": matmul_tf32, "matmul_fp32_precision": matmul,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic)}
