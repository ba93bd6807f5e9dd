"""What paper-scale runs need on disk, checked before anything is submitted.

A SLURM array that waits a day in the queue and then fails in every task for want of a file is the
costliest way to learn it is missing. So before submitting, the harness checks, for the whole matrix
at once: COCO-stuff maps for the semantic models (HTC, SCNet, the +GC rows), and the ImageNet
backbone file of every run (the published file in torch's hub cache, or `--backbone-weights`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from experiments.runspec import RunSpec, UsageError
from scnet.config import ConfigError


def check_paper_requirements(matrix: Iterable[RunSpec]) -> None:
    """Raise one UsageError naming what is missing and how to get it; smoke runs need nothing."""
    configs = [spec.config for spec in matrix if spec.config.scale == "paper"]
    if not configs:
        return
    from scnet.engine.semantic_classes import require_stuff_maps
    from scnet.weights.backbone_init import require_backbone_weights

    try:
        for root in sorted({c.data_root for c in configs if c.model_config().semantic}):
            require_stuff_maps(Path(root))
        require_backbone_weights(configs)
    except (ConfigError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def check_one_backbone(matrix: Iterable[RunSpec], path: str) -> None:
    """`--backbone-weights` gives one file for every run: refuse a matrix of several backbones."""
    backbones = sorted({spec.config.model_config().backbone for spec in matrix})
    if len(backbones) > 1:
        raise UsageError(f"--backbone-weights {path}: one file for runs of {len(backbones)} backbones "
                         f"({', '.join(backbones)}); run the tables one backbone at a time, or put MMDetection's "
                         "files in the hub cache with `python -m scnet.weights fetch --all`")
