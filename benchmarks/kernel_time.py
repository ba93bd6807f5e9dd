"""The time a step spends inside its convolution and matrix-multiply kernels (not a test).

The `--floor` of `train_speed.py` and `inference_speed.py` is the step's conv/FC FLOPs at this CPU's
float32 matmul rate. Those kernels themselves (oneDNN's convolutions, MKL's GEMMs) do not all run at
that rate: small spatial maps, 64-channel heads and the backward passes run slower. Their measured
time is therefore a second floor, one that no change outside the kernels can go below, since the
kernels and their summation order are what keeps our outputs bit for bit equal to MMDetection's.
A goal such as "within 1.15x of the floor" is out of reach without other kernels (channels-last,
folded normalisation: other bits) once this time alone exceeds it.

The time is torch.profiler's self CPU time of the ops that torch's FlopCounterMode counts, so the
two floors cover the same arithmetic. oneDNN's own threads work inside those ops; RoIAlign's thread
pool (scnet.models.roi_features) is not counted, as RoIAlign is not conv/FC arithmetic.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from torch.profiler import ProfilerActivity, profile

# Self time of these ops is convolution or matrix-multiply work. `aten::_convolution` holds oneDNN's
# transposed convolutions (they have no op of their own) besides a few microseconds of dispatch.
ARITHMETIC_OPS = frozenset({
    "aten::mkldnn_convolution", "aten::_convolution", "aten::convolution_backward",
    "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward", "aten::slow_conv_transpose2d",
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
})


@dataclass(frozen=True)
class KernelTime:
    """Per call: seconds in conv/FC kernels, and the wall time of the same profiled calls. Their ratio
    is taken at one moment, so it holds on a machine whose speed drifts between measurements; the
    profiler's cost per op makes the wall time a little longer than an unprofiled call."""

    kernel_s: float
    wall_s: float

    @property
    def share(self) -> float:
        return self.kernel_s / self.wall_s if self.wall_s > 0 else 0.0


def arithmetic_seconds(run: Callable[[], object], repeats: int = 1) -> KernelTime:
    """Conv/FC kernel time and wall time per call of `run`, averaged over `repeats` profiled calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    # Kineto's log otherwise ends each profile with an ERROR line about GPUs on a machine without any;
    # it reads this when a profile starts.
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        for _ in range(repeats):
            run()
        wall = time.perf_counter() - started
    micros = sum(event.self_cpu_time_total for event in profiler.key_averages() if event.key in ARITHMETIC_OPS)
    return KernelTime(micros / 1e6 / repeats, wall / repeats)
