"""Every finished run under a folder as one DataFrame row.

A folder of runs is shared by many jobs and users, so some files will be foreign or half-written;
those are skipped with a `SkippedRunWarning` naming the file, never allowed to stop the gathering.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
from tqdm import tqdm

from analysis.matching import model_key
from scnet.records.files import RecordError
from scnet.records.result import METRIC_KINDS, METRIC_NAMES, RESULT_FILE, read_result
from scnet.records.run_dir import RunDir

# Folders that never hold a result.json of their own; skipping them keeps walks over big trees fast.
_PRUNE = {RunDir.CHECKPOINTS, "__pycache__", ".git", RunDir.SUBMITIT, ".submitit"}

BASE_COLUMNS = (
    "run_dir", "run_id", "preset", "scale", "seed", "model_key", "num_classes", "num_semantic_classes",
    *(f"{kind}_{name}" for kind in METRIC_KINDS for name in METRIC_NAMES),
    "speed_fps", "device", "train_s", "eval_s", "mtime",
)


class SkippedRunWarning(UserWarning):
    """A result.json that could not be read or validated; the message names the file and the field."""


def find_run_files(root: str | os.PathLike, name: str) -> Iterator[Path]:
    """Every file called `name` in the run folders under `root` (config.json: every run set up,
    finished or not; result.json: the finished ones)."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in _PRUNE and not d.startswith("."))
        if name in files:
            yield Path(folder) / name


def find_result_files(root: str | os.PathLike) -> Iterator[Path]:
    return find_run_files(root, RESULT_FILE)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}", sub, out)
    elif isinstance(value, list):
        out[prefix] = _as_tuple(value)  # hashable, so columns can be grouped on
    else:
        out[prefix] = value


def result_row(result: dict[str, Any], path: Path) -> dict[str, Any]:
    """One validated result as a flat dict: metric columns `bbox_AP`.., config columns `config.*`/`model.*`."""
    config = result["config"]
    model = config["model"]
    row: dict[str, Any] = {
        "run_dir": str(path.parent),
        "run_id": result.get("run_id") or config.get("run_id") or path.parent.name,
        "preset": config["preset"],
        "scale": config["scale"],
        "seed": config["seed"],
        "model_key": model_key(model),
        "num_classes": model.get("num_classes"),
        "num_semantic_classes": model.get("num_semantic_classes"),
        "speed_fps": float(result["speed"]["images_per_s"]),
        "device": result["speed"]["device"],
        "train_s": float(result["timing"]["train_s"]),
        "eval_s": float(result["timing"]["eval_s"]),
        "mtime": path.stat().st_mtime,
    }
    for kind in METRIC_KINDS:
        for name in METRIC_NAMES:
            value = result["metrics"][kind][name]
            row[f"{kind}_{name}"] = float("nan") if value is None else float(value)
    for key, value in config.items():
        if key == "model":
            continue
        _flatten(f"config.{key}", value, row)
    for key, value in model.items():
        _flatten(f"model.{key}", value, row)
    return row


def gather_runs(root: str | os.PathLike, progress: bool | None = None) -> pd.DataFrame:
    """A row per finished run under `root` (recursively); unreadable results are skipped with a warning."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of runs (pass --runs with the folder holding run directories)")
    paths = sorted(find_result_files(root))
    show = progress if progress is not None else len(paths) > 500
    rows = []
    for path in tqdm(paths, desc="reading results", unit="run", disable=not show):
        try:
            rows.append(result_row(read_result(path), path))
        except RecordError as exc:
            warnings.warn(f"skipped a run: {exc}", SkippedRunWarning, stacklevel=2)
        except (KeyError, TypeError, ValueError, OSError) as exc:
            warnings.warn(f"skipping {path}: {type(exc).__name__}: {exc}", SkippedRunWarning, stacklevel=2)
    frame = pd.DataFrame(rows)
    for column in BASE_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series(dtype=object)
    extra = sorted(c for c in frame.columns if c not in BASE_COLUMNS)
    return frame[list(BASE_COLUMNS) + extra]
