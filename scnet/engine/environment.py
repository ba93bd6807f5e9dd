"""env.json: the versions, commit and machine behind a run's numbers."""
from __future__ import annotations

import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from scnet.engine.precision import float32_settings

_PACKAGES = ("torch", "torchvision", "numpy", "pycocotools", "pandas", "submitit", "scnet-harness")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def collect_environment(*, world_size: int = 1, device: str = "cpu") -> dict[str, Any]:
    source = Path(__file__).resolve().parents[2]
    commit = _git(["rev-parse", "HEAD"], source)
    status = _git(["status", "--porcelain", "--untracked-files=no"], source)
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "device": device,
        "world_size": world_size,
        "cpu_threads": torch.get_num_threads(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
    }
    if torch.cuda.is_available():
        env["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["nccl"] = nccl_version()
    # The float32 arithmetic CUDA runs (TF32 or IEEE convolutions and matmuls): scnet.engine.precision.
    env["float32"] = float32_settings()
    return env


def nccl_version() -> str | None:
    """The NCCL that torch was built with ("2.21.5"), None without one."""
    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(str(part) for part in version) if isinstance(version, tuple) else str(version)
