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

from scnet.models.sampling import TAKE_ALL, Sample


@dataclass
class StepRecord:
    samples: dict[str, list[dict[str, int]]] = field(default_factory=dict)
    accuracy: dict[int, torch.Tensor] = field(default_factory=dict)  # box stage -> percent correct (its `acc`)
    proposals: list[torch.Tensor] = field(default_factory=list)  # per image, what the first box stage got

    def add_sample(self, sampler: str, chosen: Sample) -> None:
        self.samples.setdefault(sampler, []).append(
            {"pos": int(chosen.pos_index.numel()), "neg": int(chosen.neg_index.numel())})


@dataclass
class SamplingContext:
    """How the samplers of one training forward draw: from `generator`, or every candidate (`take_all`)."""

    generator: torch.Generator | None = None
    take_all: bool = False
    record: StepRecord = field(default_factory=StepRecord)

    def size(self, num: int) -> int:
        return TAKE_ALL if self.take_all else num
