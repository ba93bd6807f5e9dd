"""Training checkpoints: written atomically, read back with `weights_only=True`.

A checkpoint holds everything the next iteration depends on: model, optimiser (momentum buffers),
AMP scaler, every rank's generator states, the IoU recorder, and the iteration counter (which is
also the learning-rate schedule's and the data order's whole state).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from scnet.engine.atomic import atomic_write

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pth"
CHECKPOINT_FORMAT = "scnet-train-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this run."""


def last_checkpoint_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """torch.save to a temp file in the same folder, fsync, then os.replace: never a half-written file."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: checkpoint not found") from exc
    except IsADirectoryError as exc:
        raise CheckpointError(f"{path}: a folder, not a checkpoint file") from exc
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {reason}); "
                              "delete it to start the run afresh") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a training checkpoint of this project "
                              f"(field 'format' is {state.get('format') if isinstance(state, dict) else None!r})")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: field 'version' is {state.get('version')!r}; this code reads "
                              f"version {CHECKPOINT_VERSION}")
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | os.PathLike,
                     preset_name: str | None = None) -> None:
    """Load a training checkpoint's weights strictly; weights of another preset or class count give
    one CheckpointError line naming the checkpoint's preset, not load_state_dict's tensor list."""
    from scnet.checkpoints.loading import CheckpointError as WeightsError
    from scnet.checkpoints.loading import check_state_fits

    run_config = state.get("run_config")
    saved_preset = run_config.get("preset") if isinstance(run_config, dict) else None
    try:
        check_state_fits(model, state["model"], path, guess=saved_preset, preset_name=preset_name)
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from exc
