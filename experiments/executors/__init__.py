"""Executors: in-process, local subprocesses and SLURM (submitit), all behind `Executor`."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: experiments.status imports experiments.executors.queue
    from experiments.executors.base import Executor
    from experiments.profile import SlurmProfile

EXECUTORS = ("inline", "local", "slurm")

__all__ = ["EXECUTORS", "make_executor"]


def make_executor(name: str, *, runs_dir: Path, jobs: int = 1, progress: bool = True,
                  profile: "SlurmProfile | None" = None, job_name: str = "scnet",
                  gpu_groups: list[tuple[str, ...]] | None = None) -> "Executor":
    """The executor called `name`; SLURM needs a profile (where and how big the jobs are); the
    local one trains each run on one GPU group (one process per GPU) when given `gpu_groups`."""
    if name == "inline":
        from experiments.executors.inline import InlineExecutor

        return InlineExecutor(progress=progress)
    if name == "local":
        from experiments.executors.local import LocalExecutor

        return LocalExecutor(jobs=jobs, progress=progress, queue_log_dir=Path(runs_dir) / ".local-queue",
                             gpu_groups=gpu_groups)
    if name == "slurm":
        from experiments.executors.slurm import SlurmExecutor

        if profile is None:
            raise ValueError("the SLURM executor needs a profile")
        return SlurmExecutor(profile, runs_dir, job_name=job_name, progress=progress)
    raise ValueError(f"unknown executor {name!r}; use one of {EXECUTORS}")
