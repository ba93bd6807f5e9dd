"""Checkpoint import/export: MMDetection 3.x checkpoints and the project's own format."""
from scnet.checkpoints.loading import CheckpointError, load_checkpoint, save_checkpoint
from scnet.checkpoints.mmdet_keys import mmdet_to_ours

__all__ = ["CheckpointError", "load_checkpoint", "mmdet_to_ours", "save_checkpoint"]
