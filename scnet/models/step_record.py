"""What one training forward did besides its losses: how many positives and negatives each sampler
call took, the classification accuracy of each box stage, and the proposals the box stages got.

`Detector.last_step` holds the record of the latest training forward; `python -m scnet.train_step`
reports it beside MMDetection's own numbers (its `samples` are MMDetection's sampler calls: `rpn`
once per image, `stage{k}` once per image and stage, twice for HTC, whose mask branch re-samples the
refined boxes).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scnet.models.sampling import TAKE_ALL


@dataclass
class StepRecord:
    accuracy: dict[int, torch.Tensor] = field(default_factory=dict)  # box stage -> percent correct (its `acc`)
    proposals: list[torch.Tensor] = field(default_factory=list)  # per image, what the first box stage got
    # sampler -> one (positives, negatives) per call; tensors until read, so that recording costs the
    # training step no wait on the device
    _counts: dict[str, list[tuple[int | torch.Tensor, int | torch.Tensor]]] = field(default_factory=dict)

    def add_sample(self, sampler: str, num_pos: int | torch.Tensor, num_neg: int | torch.Tensor) -> None:
        self._counts.setdefault(sampler, []).append((num_pos, num_neg))

    @property
    def samples(self) -> dict[str, list[dict[str, int]]]:
        """How many positives and negatives each sampler call took, as MMDetection's log reports them."""
        return {name: [{"pos": int(p), "neg": int(n)} for p, n in calls] for name, calls in self._counts.items()}


@dataclass
class SamplingContext:
    """How the samplers of one training forward draw: from `generator`, or every candidate (`take_all`)."""

    generator: torch.Generator | None = None
    take_all: bool = False
    record: StepRecord = field(default_factory=StepRecord)

    def size(self, num: int) -> int:
        return TAKE_ALL if self.take_all else num
