"""Training checkpoints (a run's `checkpoints/last.pth`, `RunDir.last_checkpoint`): written atomically,
read back with the project's bounded, code-free loader (`scnet.checkpoints.torch_file`), every field
the trainer and evaluation use checked on the way in. Weights alone (MMDetection's files, ours, a
training checkpoint's model) are `scnet.checkpoints.loading`'s business.

A checkpoint holds everything the next iteration depends on: model, optimiser (momentum buffers),
AMP scaler, every rank's generator states, the IoU recorder, and the iteration counter (which is
also the learning-rate schedule's and the data order's whole state).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from scnet.records.files import atomic_write

CHECKPOINT_FORMAT = "scnet-train-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this run."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """torch.save to a temp file in the same folder, fsync, then os.replace: never a half-written file."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    return atomic_write(path, lambda handle: torch.save(payload, handle))


# Fields a training checkpoint must hold, and the type each must have (`save` in the trainer).
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "iteration": int, "total_iters": int, "iters_per_epoch": int, "model": dict, "optimizer": dict,
    "scaler": dict, "iou_recorder": dict, "rng": object, "log_windows": object, "train_s": (int, float),
    "world_size": int, "run_config": dict,
}


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    from scnet.messages import path_problem
    from scnet.checkpoints.torch_file import TorchFileError, read_torch_file
    from scnet.messages import describe

    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise CheckpointError(f"{path}: checkpoint {problem}")
    try:
        state = read_torch_file(path)
    except TorchFileError as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc}); delete it to start the run afresh") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = describe(state.get("format")) if isinstance(state, dict) else describe(state)
        raise CheckpointError(f"{path}: not a training checkpoint of this project (field 'format' is {found})")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: field 'version' is {describe(state.get('version'))}; this code reads "
                              f"version {CHECKPOINT_VERSION}")
    for name, kind in REQUIRED_FIELDS.items():
        value = state.get(name)
        if name in state and (not isinstance(value, kind) or isinstance(value, bool)):
            raise CheckpointError(f"{path}: field '{name}' is {describe(value)}; the checkpoint is damaged or was "
                                  "not written by this trainer; delete it to start the run afresh")
    return state


def require_fields(state: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """`state` if it holds every field training and evaluation use (`load_checkpoint` checked their
    types), else one CheckpointError naming the first one missing."""
    missing = [name for name in REQUIRED_FIELDS if name not in state]
    if missing:
        raise CheckpointError(f"{path}: field '{missing[0]}' is missing; the checkpoint is damaged or was not "
                              "written by this trainer; delete it to start the run afresh")
    if not 0 <= state["iteration"] <= state["total_iters"] or state["iters_per_epoch"] < 1:
        raise CheckpointError(f"{path}: fields 'iteration' / 'total_iters' / 'iters_per_epoch' are inconsistent; "
                              "delete it to start the run afresh")
    return state


def unusable_field(path: str | os.PathLike, exc: BaseException) -> CheckpointError:
    """A field that passed the type checks but does not load (an optimiser of other parameters, a
    damaged generator state): one line instead of the loader's traceback."""
    from scnet.messages import shorten

    return CheckpointError(f"{path}: its training state does not load into this run ({type(exc).__name__}: "
                           f"{shorten(str(exc), 200)}); delete it to start the run afresh")


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | os.PathLike,
                     preset_name: str | None = None) -> None:
    """Load a training checkpoint's weights strictly; weights of another preset or class count give
    one CheckpointError line naming the checkpoint's preset, not load_state_dict's tensor list."""
    from scnet.checkpoints.loading import WeightsError, check_state_fits, tensor_dict

    run_config = state.get("run_config")
    saved_preset = run_config.get("preset") if isinstance(run_config, dict) else None
    saved_preset = saved_preset if isinstance(saved_preset, str) else None
    try:
        check_state_fits(model, tensor_dict(state["model"], "model"), path, guess=saved_preset,
                         preset_name=preset_name)
    except WeightsError as exc:
        raise CheckpointError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
