"""Fixtures shared by several test modules."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture()
def two_threads():
    """Run the test on 2 CPU threads, as MMDetection's oracles were computed. Convolution reductions
    are reassociated with another thread count, which moves boxes by ~0.1 px and gradient norms by up to
    3e-4: harmless on trained weights, but the random reference weights give thin masks that such a
    shift can push past the matching rule."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
