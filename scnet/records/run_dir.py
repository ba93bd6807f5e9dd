"""A run directory: the names of the files it holds, and the checks that keep it one run's.

The layout is docs/interfaces.md's "Run directory"; `RunDir` is the one place that names its files,
so a reader finds here what `config.json`, `checkpoints/last.pth` or `run.lock` are and who writes
them. The folder is the run's identity on disk: `config.json` (the frozen run config, written once)
says whose it is, and nothing resumes, finishes or evaluates another run's work into it.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scnet.config import ConfigError
from scnet.engine.run_config import RunConfig
from scnet.records.files import (OutputError, RecordError, check_writable_dir, file_in, read_json,
                                 remove_stale_temporaries, write_json_atomic)
from scnet.records.iou import IOU_FILE
from scnet.records.result import RESULT_FILE, read_result


class RunDir:
    """A run folder, naming what is in it. Only rank 0 writes (`scnet.engine.runner`)."""

    CONFIG = "config.json"  # the frozen RunConfig and the network it resolves to; the run's identity
    ENV = "env.json"  # versions, git commit, host (scnet.engine.environment)
    RESULT = RESULT_FILE  # result.json, written last: the run is done (scnet.records.result)
    IOU_RECORDS = IOU_FILE  # iou_records.npz: training and inference IoUs (scnet.records.iou)
    DETECTIONS = "detections.json"  # or detections.json.gz (scnet.engine.coco_eval)
    METRICS = "metrics.jsonl"  # one row per logged iteration (scnet.engine.run_log)
    LOG = "log.txt"  # for people
    CHECKPOINTS = "checkpoints"  # checkpoints/last.pth (scnet.engine.checkpoint)
    LAST_CHECKPOINT = "last.pth"
    LOCK = "run.lock"  # held by the process working on the run (scnet.engine.run_lock)
    LOCK_OWNER = "run.lock.owner"  # the lock's fallback where flock is not supported
    ATTEMPT = "attempt.json"  # the harness's latest attempt (experiments.status)
    SUBMITIT = "submitit"  # links to the SLURM jobs' logs (experiments.executors.slurm)
    # What marks a folder as a run directory (of scnet.train, scnet.evaluate or experiments.run).
    MARKERS = (CONFIG, RESULT, CHECKPOINTS, LOCK, METRICS)

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def env_file(self) -> Path:
        return self.path / self.ENV

    @property
    def result_file(self) -> Path:
        return self.path / self.RESULT

    @property
    def iou_file(self) -> Path:
        return self.path / self.IOU_RECORDS

    @property
    def detections_file(self) -> Path:
        return self.path / self.DETECTIONS

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def log_file(self) -> Path:
        return self.path / self.LOG

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / self.LAST_CHECKPOINT

    @property
    def lock_file(self) -> Path:
        return self.path / self.LOCK

    @property
    def lock_owner_file(self) -> Path:
        return self.path / self.LOCK_OWNER

    @property
    def attempt_file(self) -> Path:
        return self.path / self.ATTEMPT

    @property
    def submitit(self) -> Path:
        return self.path / self.SUBMITIT

    def is_run_dir(self) -> bool:
        return any((self.path / marker).exists() or (self.path / marker).is_symlink() for marker in self.MARKERS)

    # ------------------------------------------------------------------------------- the run's config

    def write_config_once(self, run_config: RunConfig) -> None:
        """Create the folder and its config.json (the spelling and the network it resolves to), never
        overwriting one: the config is the run's identity. Rank 0 only."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.config_file.exists():
            write_config(self.path, run_config.to_frozen_dict())

    def read_run_config(self) -> RunConfig:
        return RunConfig.from_dict(read_config(self.path))

    def remove_stale_temporaries(self) -> list[Path]:
        """Temporaries of checkpoint writes that a killed process left (`.last.pth.*.tmp`): removed when
        a run starts, by the one process that holds the run."""
        return remove_stale_temporaries(self.checkpoints)

    # ------------------------------------------------------------------ one run per folder, checked

    def check_holds(self, run_config: RunConfig) -> None:
        """Refuse to resume (or return the result of) a different run in an existing folder."""
        if not self.config_file.exists():
            return
        existing = self.read_run_config()
        if existing.run_id() != run_config.run_id():
            state = "finished run" if self.result_file.exists() else "run"
            raise RunDirError(f"{self.config_file}: this folder holds {state} {existing.run_id()}, not "
                              f"{run_config.run_id()} (the configs differ); use another run directory or delete "
                              "this one")

    def finished_result(self, run_config: RunConfig, *, may_move: bool) -> dict[str, Any] | None:
        """The run's result if it is finished; None if it still has to run.

        A result.json that does not validate is moved aside (when `may_move`: rank 0), never deleted:
        the run then resumes from its checkpoint and writes a new one, as `experiments.run --status`
        announces.
        """
        self.check_holds(run_config)
        path = self.result_file
        if not path.exists():
            return None
        try:
            result = read_result(self.path)
        except RecordError as exc:
            if may_move:
                self.move_aside(path, exc)
            return None
        stored = result["config"]
        try:
            stored_id = RunConfig.from_dict({k: v for k, v in stored.items() if k != "model"}).run_id()
        except (ConfigError, TypeError):
            stored_id = result.get("run_id")
        if stored_id != run_config.run_id():
            raise RunDirError(f"{path}: this folder holds finished run {stored_id}, not {run_config.run_id()} "
                              "(the configs differ); use another run directory")
        return result

    def move_aside_invalid_result(self) -> None:
        """A result.json that does not validate, moved aside before the run is evaluated again."""
        if self.result_file.exists():
            try:
                read_result(self.path)
            except RecordError as exc:
                self.move_aside(self.result_file, exc)

    def move_aside(self, path: Path, reason: Exception) -> Path:
        from scnet.engine.run_log import RunLog

        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = path.with_name(f"{path.name}.invalid-{stamp}")
        os.replace(path, aside)
        RunLog(self.path).info(f"{path.name} did not validate ({reason}); kept as {aside.name}, the run "
                               "resumes and writes a new one")
        return aside

    def check_evaluation_out(self, run_config: RunConfig) -> None:
        """Weights from elsewhere go to a folder of their own: never over a run's results (result.json,
        detections, IoU records) or into a training run, whose result.json would then describe them."""
        out = self.path
        if self.result_file.exists():
            raise RunDirError(f"{self.result_file}: {out} already holds finished results; evaluating into it "
                              "would overwrite them; give --out a new folder")
        if self.last_checkpoint.exists():
            raise RunDirError(f"{out} is a training run (it has {self.last_checkpoint.relative_to(out)}); "
                              "evaluating other weights into it would mark it finished with their numbers; give "
                              "--out a new folder")
        self.check_holds(run_config)

    def check_training_finished(self, state: Mapping[str, Any]) -> None:
        """A run is evaluated with --run only once its checkpoint holds the last iteration."""
        done, total = int(state["iteration"]), int(state["total_iters"])
        if done < total:
            raise RunDirError(
                f"{self.path}: training is not finished (its checkpoint is at iteration {done} of {total}); "
                "evaluating it with --run would mark the half-trained run done. Finish it with "
                f"'python -m scnet.train --config {self.config_file}' (it resumes), or evaluate these weights "
                f"elsewhere with --checkpoint {self.last_checkpoint} --out NEW_FOLDER (and --preset, --data)")


class RunDirError(ConfigError):
    """A run directory that cannot take this work without losing or misrepresenting what it holds."""


def write_config(run_dir: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """The run's frozen config (model flags, data, schedule, seed, scale) beside its outputs."""
    return write_json_atomic(RunDir(run_dir).config_file, dict(config))


def read_config(run_dir_or_file: str | os.PathLike) -> dict[str, Any]:
    return read_json(file_in(run_dir_or_file, RunDir.CONFIG))


def write_env(run_dir: str | os.PathLike, env: Mapping[str, Any]) -> Path:
    """Versions, git commit and host, so a number can be traced to the code that made it."""
    return write_json_atomic(RunDir(run_dir).env_file, dict(env))


def read_env(run_dir_or_file: str | os.PathLike) -> dict[str, Any]:
    return read_json(file_in(run_dir_or_file, RunDir.ENV))


def check_new_output_file(path: str | os.PathLike, what: str, *, force: bool = False) -> Path:
    """Refuse, before any work, an output file that would overwrite one (unless `force`), that is a
    folder, whose folder is a run directory (its records are the run's own), or that cannot be
    written. `what` names the option (e.g. "--out")."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder; give the path of the file to write")
    folder = path.parent.resolve() if path.parent.exists() else path.parent
    if RunDir(folder).is_run_dir():
        raise OutputError(f"{what} {path}: {folder} is a run directory, whose files belong to the run; write "
                          "elsewhere")
    if (path.exists() or path.is_symlink()) and not force:
        raise OutputError(f"{what} {path}: the file exists; give another path, or --force to replace it")
    check_writable_dir(path.parent, what)
    return path
