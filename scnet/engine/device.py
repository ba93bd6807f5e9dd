"""Choosing a process's device, and refusing to train on the CPU what was meant for GPUs.

A job that asked for GPUs but finds CUDA unusable (a driver older than the wheel's CUDA, a node
without GPUs, CUDA_VISIBLE_DEVICES empty) would otherwise fall back to the CPU and gloo and run for
weeks. A run needs a GPU when
- its device is given as "cuda"/"cuda:N", or
- `SCNET_REQUIRE_GPU=1` is set (the executor's way of saying "the profile asked for GPUs"), or
  SLURM allocated GPUs to the job (SLURM_JOB_GPUS, SLURM_STEP_GPUS, SLURM_GPUS_ON_NODE), or
- it trains at paper scale (nobody trains a paper-scale R50 on a CPU),
and no device was given explicitly as "cpu" (`--device cpu` keeps CPU runs at paper scale possible,
e.g. to check a set-up).
"""
from __future__ import annotations

import os
import platform
import re
import warnings
from pathlib import Path
from typing import Mapping

import torch

REQUIRE_GPU_ENV = "SCNET_REQUIRE_GPU"
_SLURM_GPU_VARS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")


class DeviceUnavailable(RuntimeError):
    """The run needs a GPU and CUDA cannot give one; the message names the versions involved."""


def gpu_requested(env: Mapping[str, str] | None = None) -> str | None:
    """Why the environment says this process must use a GPU, or None."""
    env = os.environ if env is None else env
    if env.get(REQUIRE_GPU_ENV, "").strip().lower() in ("1", "true", "yes"):
        return f"{REQUIRE_GPU_ENV}={env[REQUIRE_GPU_ENV]}"
    for name in _SLURM_GPU_VARS:
        value = env.get(name, "").strip()
        if value and value not in ("0", "(null)", "N/A"):
            return f"SLURM allocated GPUs ({name}={value})"
    return None


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version, read without initialising CUDA (None without a driver)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9]+(?:\.[0-9]+)+)", text)
    return match.group(1) if match else text.splitlines()[0].strip() if text.strip() else None


def cuda_usable() -> tuple[bool, str]:
    """(usable, torch's own complaint if any): is_available() warns instead of raising on a bad driver."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available() and torch.cuda.device_count() > 0
    complaint = " ".join(str(w.message).strip() for w in caught
                         if "CUDA" in str(w.message) or "driver" in str(w.message))
    return available, complaint


def cuda_diagnosis(complaint: str = "") -> str:
    """One line naming what a user needs to fix an unusable CUDA: torch's CUDA, the driver, the GPUs seen."""
    parts = [f"torch {torch.__version__} built for CUDA {torch.version.cuda or 'none (a CPU-only wheel)'}",
             f"NVIDIA driver {driver_version() or 'not found (/proc/driver/nvidia/version absent)'}",
             f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}",
             f"host {platform.node()}"]
    text = "; ".join(parts)
    if complaint:
        text += f"; torch says: {complaint}"
    return text


def check_device_usable(device: str | torch.device | None = None, *,
                        gpu_required_because: str | None = None) -> bool:
    """Whether CUDA is usable, or DeviceUnavailable if the run needs a GPU it cannot give; changes
    nothing (command-line tools call it before any work, `pick_device` again when it chooses)."""
    if device is not None:
        if torch.device(device).type != "cuda":
            return False
        gpu_required_because = gpu_required_because or f"device {device!s} was requested"
    usable, complaint = cuda_usable()
    if not usable and gpu_required_because:
        raise DeviceUnavailable(
            f"this run needs a GPU ({gpu_required_because}) but CUDA is unusable: {cuda_diagnosis(complaint)}. "
            "Install a torch wheel built for a CUDA this driver supports (or update the driver), check "
            "that the job was given GPUs, or pass --device cpu to run on the CPU on purpose")
    return usable


def pick_device(local_rank: int, device: str | torch.device | None = None, *,
                gpu_required_because: str | None = None) -> torch.device:
    """The requested device, else this process's GPU (local_rank) when CUDA works, else the CPU --
    unless a GPU is required, in which case an unusable CUDA raises DeviceUnavailable at once."""
    if device is not None:
        chosen = torch.device(device)
        if chosen.type != "cuda":
            return chosen
    if not check_device_usable(device, gpu_required_because=gpu_required_because):
        return torch.device("cpu")
    if device is None or (chosen.type == "cuda" and chosen.index is None):
        chosen = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(chosen)
    return chosen
