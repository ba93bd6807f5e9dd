"""Atomic file writes for the engine's own files (checkpoints, detections, trimmed logs).

The one implementation lives in `scnet.records`, the module that owns the run directory's files.
"""
from scnet.records import atomic_write

__all__ = ["atomic_write"]
