"""MMDetection's model-zoo numbers (`results/paper/mmdet_zoo.csv`) and the runs and rows they judge.

    python -m analysis.zoo results/runs/zoo_scnet_r50_1x          # one run beside the zoo's number

Researchers compare a reproduction with MMDetection's model zoo, so the zoo's box and mask AP (COCO
val2017, from MMDetection 3.3.0's metafiles; the CSV cites each) are data beside the paper's. A run or a
table row is a zoo model when its resolved network is the zoo preset's own, MMDetection's test config
included (`test_score_thr` 0.05 for Cascade Mask R-CNN, 0.001 for HTC and SCNet), and its schedule is
the zoo's (`20e` or `1x`). The tables train 20 epochs, so they show the 20e figures; a one-run check
trains a preset on the `1x` schedule (README.md, "Checking against MMDetection's model zoo").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from analysis.matching import DATASET_FIELDS, model_key
from analysis.paper import PAPER_CSV, read_reference_csv
from experiments.tables import RowSpec, model_config_for
from scnet.config import ConfigError
from scnet.engine.run_config import Schedule, default_image_scale, default_schedule

ZOO_CSV = PAPER_CSV.parent / "mmdet_zoo.csv"
ZOO_SCHEDULES = ("20e", "1x")
_COLUMNS = ("preset", "schedule", "column", "value", "mmdet_model", "mmdet_config", "weights", "source",
            "source_commit", "verified")
METRIC_COLUMN = {"AP": "segm_AP", "APbb": "bbox_AP"}


def load_zoo(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """One line per (preset, schedule, column): the zoo's value and where it was read."""
    return _load(str(Path(path) if path else ZOO_CSV)).copy()


@lru_cache(maxsize=4)
def _load(path: str) -> pd.DataFrame:
    return read_reference_csv(path, _COLUMNS, "MMDetection's model-zoo numbers")


@lru_cache(maxsize=None)
def _preset_key(preset: str) -> str:
    from scnet.presets import resolve_config

    return model_key(resolve_config(preset).to_dict())


def zoo_preset_for(model: Mapping[str, Any], schedule: str, zoo: pd.DataFrame | None = None) -> str | None:
    """The zoo preset of `schedule` whose own network `model` is (dataset facts aside), or None."""
    zoo = load_zoo() if zoo is None else zoo
    key = model_key(model)
    for preset in sorted(set(zoo.loc[zoo["schedule"] == schedule, "preset"])):
        if _preset_key(preset) == key:
            return preset
    return None


def zoo_values(preset: str, schedule: str, zoo: pd.DataFrame | None = None) -> dict[str, float]:
    """{"AP": mask AP, "APbb": box AP} of a zoo model."""
    zoo = load_zoo() if zoo is None else zoo
    lines = zoo[(zoo["preset"] == preset) & (zoo["schedule"] == schedule)]
    return {str(c): float(v) for c, v in zip(lines["column"], lines["value"])}


def zoo_values_for_row(row: RowSpec, schedule: str, zoo: pd.DataFrame | None = None) -> dict[str, float]:
    """The zoo's numbers for a table row at paper scale, where the row's network is a zoo model."""
    if not row.run:
        return {}
    preset = zoo_preset_for(model_config_for(row, "paper").to_dict(), schedule, zoo)
    return zoo_values(preset, schedule, zoo) if preset else {}


def schedule_name(schedule: Mapping[str, Any]) -> str | None:
    """"20e" or "1x" when a run's schedule is that paper-scale schedule (labels and logging aside)."""
    ours = Schedule.from_dict(schedule)
    for name in ZOO_SCHEDULES:
        reference = default_schedule("paper", name)
        if ours.replace(name=reference.name, checkpoint_every=reference.checkpoint_every,
                        log_every=reference.log_every) == reference:
            return name
    return None


@dataclass(frozen=True)
class ZooCheck:
    run_dir: str
    preset: str
    schedule: str
    zoo: dict[str, float]
    ours: dict[str, float | None]
    mmdet_model: str
    weights: str

    def to_markdown(self) -> str:
        lines = [f"**{self.run_dir}: {self.preset}, {self.schedule} schedule, beside MMDetection's model zoo "
                 f"({self.mmdet_model}; COCO val2017).**", "", "| metric | zoo | ours | ours − zoo |",
                 "|---|---:|---:|---:|"]
        for column, label in (("APbb", "box AP"), ("AP", "mask AP")):
            ours, zoo = self.ours.get(column), self.zoo.get(column)
            diff = "" if ours is None or zoo is None else f"{ours - zoo:+.1f}"
            lines.append(f"| {label} | {zoo:.1f} | {'' if ours is None else f'{ours:.1f}'} | {diff} |")
        return "\n".join(lines) + f"\n\nzoo weights: {self.weights}\n"


def check_run(run_dir: str | os.PathLike, zoo: pd.DataFrame | None = None) -> ZooCheck:
    """A finished run beside the zoo; ConfigError (naming what differs) if the run is not a zoo model."""
    from scnet.records.result import read_result
    from scnet.records.run_dir import RunDir

    zoo = load_zoo() if zoo is None else zoo
    result = read_result(RunDir(run_dir).result_file)
    config = result["config"]
    where = f"{run_dir}"
    schedule = schedule_name(config.get("schedule") or {})
    if schedule is None:
        raise ConfigError(f"{where}: its schedule is neither the paper-scale 20e nor 1x; the zoo trained those "
                          "(python -m scnet.train ... --schedule 1x)")
    if config.get("scale") != "paper" or list(config.get("image_scale") or []) != list(default_image_scale("paper")):
        raise ConfigError(f"{where}: not a paper-scale run at 1333x800 (scale {config.get('scale')!r}, image_scale "
                          f"{config.get('image_scale')}); the zoo trained on COCO at 1333x800")
    if config.get("amp"):
        raise ConfigError(f"{where}: trained with --amp; the zoo's models trained in float32")
    preset = zoo_preset_for(config["model"], schedule, zoo)
    if preset is None:
        raise ConfigError(f"{where}: its network is not a {schedule} zoo model; {_why_not(config, schedule, zoo)}")
    line = zoo[(zoo["preset"] == preset) & (zoo["schedule"] == schedule)].iloc[0]
    ours = {c: _metric(result, m) for c, m in METRIC_COLUMN.items()}
    return ZooCheck(str(run_dir), preset, schedule, zoo_values(preset, schedule, zoo), ours,
                    str(line["mmdet_model"]), str(line["weights"]))


def _metric(result: Mapping[str, Any], column: str) -> float | None:
    kind, name = column.split("_", 1)
    value = result["metrics"][kind][name]
    return None if value is None else float(value)


def _why_not(config: Mapping[str, Any], schedule: str, zoo: pd.DataFrame) -> str:
    from scnet.presets import resolve_config

    preset = config.get("preset", "")
    known = sorted(set(zoo.loc[zoo["schedule"] == schedule, "preset"]))
    if preset not in known:
        return f"the zoo has {schedule} numbers for {', '.join(known)}, not {preset!r}"
    own = json.loads(json.dumps(resolve_config(preset).to_dict()))  # tuples as lists, as result.json holds them
    differ = sorted(k for k in own if k not in DATASET_FIELDS and config["model"].get(k, own[k]) != own[k])
    return f"it differs from {preset}'s own network in {', '.join(differ)} (train the preset without --set flags)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.zoo", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run directories (with result.json)")
    args = parser.parse_args(argv)
    from scnet.records.files import RecordError

    try:
        checks = [check_run(run_dir) for run_dir in args.runs]
    except (ConfigError, RecordError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for check in checks:
        sys.stdout.write(check.to_markdown() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
