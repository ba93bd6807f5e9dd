"""benchmarks/kernel_time.py: the second floor of `--floor` counts conv/FC kernels and nothing else."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from kernel_time import arithmetic_seconds  # noqa: E402


def test_a_convolution_and_a_linear_layer_are_counted_and_take_part_of_the_call():
    conv, linear = torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.Linear(256, 256)
    image, rows = torch.randn(2, 16, 64, 64), torch.randn(64, 256)

    def run() -> None:
        torch.relu(conv(image)).sum().backward()
        linear(rows).sum().backward()

    run()
    counted = arithmetic_seconds(run, repeats=2)
    assert 0 < counted.kernel_s < counted.wall_s  # the rest: ReLU, sums, autograd
    assert counted.share == counted.kernel_s / counted.wall_s


def test_element_wise_work_counts_nothing():
    big = torch.randn(512, 512)
    counted = arithmetic_seconds(lambda: (big * 2 + 1).relu_().sum())
    assert counted.kernel_s == 0.0 and counted.wall_s > 0 and counted.share == 0.0


def test_repeats_below_one_are_refused():
    with pytest.raises(ValueError, match="repeats"):
        arithmetic_seconds(lambda: None, repeats=0)
