"""`build_model`: the public way to get a network of the family."""
from __future__ import annotations

from typing import Any

from scnet.config import ModelConfig
from scnet.models.detector import Detector
from scnet.presets import apply_flags, resolve_config


def build_model(preset: str | ModelConfig, **flags: Any) -> Detector:
    """A detector for a preset name (plus flag overrides) or an explicit ModelConfig."""
    if isinstance(preset, ModelConfig):
        cfg = apply_flags(preset.to_dict(), **flags) if flags else preset
    else:
        cfg = resolve_config(preset, **flags)
    return Detector(cfg)
