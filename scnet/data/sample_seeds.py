"""Reproducible randomness for data loading, independent of worker count and iteration order.

Every random choice a transform makes for one sample (today: the horizontal flip) comes from a
`torch.Generator` seeded from `(seed, epoch, index)`. The same run therefore flips the same images in
the same epochs whether it loads with 0 or 8 workers, and a resumed run repeats the interrupted
epoch exactly. Data order is the trainer's job; `epoch_permutation` gives the matching recipe.
"""
from __future__ import annotations

import numpy as np
import torch

# Distinct first words keep the per-sample and per-epoch streams from ever sharing a seed.
_SAMPLE_STREAM = 0x5CAE7
_ORDER_STREAM = 0x0DE12


def _derive(*words: int) -> int:
    if min(words) < 0:
        raise ValueError(f"seed, epoch and index must be >= 0, got {words[1:]}")
    state = np.random.SeedSequence(list(words)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample in one epoch; stable across processes and Python versions."""
    return _derive(_SAMPLE_STREAM, seed, epoch, index)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A fresh CPU generator for the transforms of sample `index` in `epoch`."""
    generator = torch.Generator()
    generator.manual_seed(sample_seed(seed, epoch, index))
    return generator


def epoch_permutation(length: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order of one epoch, the same on every machine for the same (seed, epoch)."""
    generator = torch.Generator()
    generator.manual_seed(_derive(_ORDER_STREAM, seed, epoch))
    return torch.randperm(length, generator=generator).tolist()
