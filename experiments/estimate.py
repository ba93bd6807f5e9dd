"""What a run matrix asks of a cluster: per run the resources of each job and the GPU-hours.

The GPU-hours come from the schedule (epochs x training images / global batch = iterations, times
the batch = images seen) divided by a training throughput per GPU: an assumed figure, or the one
`benchmarks/gpu_check.py` measured on a GPU (its JSON file given to --images-per-s-per-gpu), printed
with every estimate. Evaluation (val2017, minutes) is left out.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from experiments.runspec import UsageError
from scnet.engine.run_config import RunConfig

# train2017 images with at least one annotation: MMDetection's filter_empty_gt, which the trainer applies
# too (scnet.data.coco; an image whose annotations are all crowds is kept and trains on background).
COCO_TRAIN_IMAGES = 117_266
# Training images per second per GPU at 1333x800 in fp32 (the default; --amp is faster), for a
# cascade-style R50 model on a current data-centre GPU: a round planning figure, not a measurement.
# Mask R-CNN is faster, HTC/SCNet slower.
DEFAULT_IMAGES_PER_S_PER_GPU = 4.0


def _family(preset: str) -> str:
    """'scnet_r101' -> 'scnet', 'cascade_mask_rcnn_x101_64x4d' -> 'cascade_mask_rcnn'."""
    match = re.match(r"(.+?)_[rx]\d+", preset)
    return match.group(1) if match else preset


@dataclass(frozen=True)
class Throughput:
    """Training images/s per GPU behind the estimate: one assumed figure, or gpu_check's measurements
    per R50 preset and mode (fp32/amp), used for the run's model family (R101/X101 runs are slower than
    their family's R50 figure says) and, for a family not measured, the slowest measured."""

    assumed: float = DEFAULT_IMAGES_PER_S_PER_GPU
    measured: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    source: str = ""

    def for_run(self, config: RunConfig) -> float:
        if not self.measured:
            return self.assumed
        mode = "amp" if config.amp else "fp32"
        figures = {preset: modes[mode] for preset, modes in self.measured.items() if mode in modes}
        figures = figures or {preset: min(modes.values()) for preset, modes in self.measured.items()}
        same = [value for preset, value in figures.items() if _family(preset) == _family(config.preset)]
        return same[0] if same else min(figures.values())

    def describe(self) -> str:
        if not self.measured:
            return (f"assumed: {self.assumed:g} training images/s per GPU (1333x800; not measured; "
                    "--images-per-s-per-gpu to change, or give it benchmarks/gpu_check.py's JSON file)")
        figures = ", ".join(f"{preset} {'/'.join(f'{v:.2f}' for v in modes.values())} ({'/'.join(modes)})"
                            for preset, modes in self.measured.items())
        return (f"measured: training images/s per GPU {figures}, by {self.source} (1333x800, 2 images, one GPU, "
                "no data loading or DDP; R101/X101 runs take their R50 family's figure and are slower)")


def read_throughput(value: str) -> Throughput:
    """--images-per-s-per-gpu: a positive number (assumed), or gpu_check's JSON file (measured)."""
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if not (math.isfinite(number) and number > 0):
            raise UsageError(f"--images-per-s-per-gpu {value}: need a positive finite number")
        return Throughput(assumed=number)
    path = Path(value)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"--images-per-s-per-gpu {value}: neither a number nor a readable gpu_check JSON file "
                         f"({exc}); give images/s, or the file benchmarks/gpu_check.py wrote") from None
    measured = record.get("images_per_s_per_gpu") if isinstance(record, dict) else None
    if not isinstance(measured, dict) or not measured or record.get("quick"):
        raise UsageError(f"--images-per-s-per-gpu {value}: no GPU training figures in it (a --quick or CPU run, or "
                         "every training row failed); run python benchmarks/gpu_check.py on a GPU")
    return Throughput(measured=measured, source=f"{path.name} ({record.get('device')}, {record.get('date')})")


@dataclass(frozen=True)
class RunEstimate:
    iterations: int
    images: int
    gpus: int
    gpu_hours: float  # the same on any number of GPUs (the throughput is per GPU)
    wall_hours: float | None  # None when no GPU is asked for
    jobs: int | None  # jobs of the profile's time limit the run needs (1 + requeues)

    def describe(self) -> str:
        text = (f"{self.iterations:,} iterations x {self.images // max(self.iterations, 1)} images: "
                f"~{self.gpu_hours:,.0f} GPU-h")
        if self.wall_hours is None:
            return text + " (but no GPU is asked for here)"
        text += f" (~{self.wall_hours:,.1f} h on {self.gpus} GPU(s)"
        if self.jobs is not None:
            text += f", {self.jobs} job(s) of the time limit"
        return text + ")"


def estimate_run(config: RunConfig, gpus: int, *, images_per_s_per_gpu: float = DEFAULT_IMAGES_PER_S_PER_GPU,
                 train_images: int = COCO_TRAIN_IMAGES, time_limit_min: int | None = None) -> RunEstimate:
    """The run's training cost on `gpus` GPUs (all processes of the run)."""
    schedule = config.schedule
    iterations = schedule.total_iters(max(1, train_images // schedule.batch_size))
    images = iterations * schedule.batch_size
    gpu_hours = images / images_per_s_per_gpu / 3600.0
    if gpus < 1:
        return RunEstimate(iterations, images, 0, gpu_hours, None, None)
    wall_hours = gpu_hours / gpus
    jobs = math.ceil(wall_hours * 60 / time_limit_min) if time_limit_min else None
    return RunEstimate(iterations, images, gpus, gpu_hours, wall_hours, jobs)


def describe_resources(resources: dict[str, Any], source: str) -> str:
    """'1 node(s), 8 task(s), 8 GPU(s) (a100), 64 CPUs (8 per task), 400G per node, 1-00:00:00 per job (...)'."""
    parts = [f"{resources['nodes']} node(s)", f"{resources['tasks']} task(s)"]
    gpus = f"{resources['gpus']} GPU(s)"
    if resources.get("gpu_type"):
        gpus += f" ({resources['gpu_type']})"
    parts.append(gpus)
    parts.append(f"{resources['cpus']} CPUs ({resources['cpus_per_task']} per task)" if resources.get("cpus")
                 else "CPUs: cluster default")
    parts.append(f"{resources['mem_per_node']} per node" if resources.get("mem_per_node") else "mem: cluster default")
    if resources.get("time_min"):
        parts.append(f"{format_minutes(resources['time_min'])} per job")
    return ", ".join(parts) + f" ({source})"


def format_minutes(minutes: int) -> str:
    days, rest = divmod(int(minutes), 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"
