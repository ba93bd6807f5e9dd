"""Weights files: MMDetection 3.x checkpoints and the project's own format, read without running code.

(A run's training checkpoint, the state it resumes from, is `scnet.engine.checkpoint`'s.)
"""
from scnet.checkpoints.loading import WeightsError, load_weights, save_weights
from scnet.checkpoints.mmdet_keys import mmdet_to_ours

__all__ = ["WeightsError", "load_weights", "mmdet_to_ours", "save_weights"]
