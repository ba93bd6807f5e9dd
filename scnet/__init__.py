"""SCNet harness: one detector family with feature flags (Mask R-CNN, Cascade Mask R-CNN, HTC, SCNet).

Names are imported lazily so that light users (analysis, records) do not pay for importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_model": "scnet.build",
    "ConfigError": "scnet.config",
    "ModelConfig": "scnet.config",
    "preset_names": "scnet.presets",
    "resolve_config": "scnet.presets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scnet' has no attribute {name!r}")
