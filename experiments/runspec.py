"""From table rows to runs: the run matrix of one or more tables at one scale.

A run is a frozen `RunConfig`; its identity is `RunConfig.run_id()`, a hash of the resolved network,
data, schedule and seed. Rows of several tables that resolve to the same network are therefore one
run (Table 2's "+ SC + FR" and Table 5's lambda=None train once), and a changed config is a new run
in a new directory.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from experiments.tables import TABLES, RowSpec, preset_for, table_names
from scnet.config import ConfigError
from scnet.data.location import DEFAULT_SYNTHETIC_ROOT
from scnet.engine.run_config import SCALES, RunConfig, default_image_scale, default_schedule

# The paper trains every model of Tables 1-5 for 20 epochs (lr /10 after 16 and 19).
SCHEDULE = "20e"
DEFAULT_SMOKE_DATA = DEFAULT_SYNTHETIC_ROOT  # the only path where smoke data is generated on first use
COCO_FILES = ("annotations/instances_train2017.json", "annotations/instances_val2017.json",
              "train2017", "val2017")


class UsageError(Exception):
    """Bad input to the harness (name, flag, file); the CLI prints it and exits with status 2."""


@dataclass(frozen=True)
class RunSpec:
    """One run of the matrix and the table rows it produces."""

    config: RunConfig
    rows: tuple[tuple[str, str], ...]  # (table, row label)

    @property
    def run_id(self) -> str:
        return self.config.run_id()

    def run_dir(self, runs_dir: Path) -> Path:
        return Path(runs_dir) / self.run_id

    def describe(self) -> str:
        """The run's flags as a user would type them: preset, row flags, seed."""
        flags = " ".join(f"{k}={_short(v)}" for k, v in sorted(self.config.model_flags.items()))
        parts = [f"preset={self.config.preset}"]
        if flags:
            parts.append(flags)
        parts.append(f"seed={self.config.seed}")
        return " ".join(parts)

    def row_labels(self) -> str:
        return "; ".join(f"{table}: {label}" for table, label in self.rows)


def _short(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def resolve_tables(names: Iterable[str]) -> list[str]:
    """Table names as given ('all' for every table), each checked; unknown ones get a suggestion."""
    known = table_names()
    out: list[str] = []
    for name in names:
        if name == "all":
            wanted = known
        elif name in TABLES:
            wanted = [name]
        else:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"unknown table {name!r}{hint} (known: {', '.join(known)}, or 'all')")
        out.extend(n for n in wanted if n not in out)
    if not out:
        raise UsageError(f"name at least one table ({', '.join(known)}, or 'all')")
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`--set schedule.max_iters=20` -> {"schedule.max_iters": 20}; values are JSON, else strings."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: write KEY=VALUE, e.g. --set schedule.max_iters=20")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        overrides[key.strip()] = value
    return overrides


def _apply_overrides(config: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    if not overrides:
        return config
    values = config.to_dict()
    for dotted, value in overrides.items():
        node = values
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                raise UsageError(f"--set {dotted}: {part!r} is not a section of the run config "
                                 f"(sections: {', '.join(k for k, v in values.items() if isinstance(v, dict))})")
            node = child
        if leaf not in node and node is not values.get("model_flags"):
            close = difflib.get_close_matches(leaf, list(node), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"--set {dotted}: unknown field {leaf!r}{hint} (fields: {', '.join(sorted(node))})")
        node[leaf] = value
    try:
        return RunConfig.from_dict(values)
    except (ConfigError, TypeError, ValueError) as exc:
        raise UsageError(f"--set: {exc}") from None


def run_config_for(row: RowSpec, scale: str, data_root: Path, seed: int = 0,
                   overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """The run that produces `row` at `scale`: the row's network, the paper's schedule shape, a seed."""
    config = RunConfig(
        preset=preset_for(row, scale),
        model_flags=dict(row.flags),
        data_root=str(data_root),
        scale=scale,
        seed=seed,
        image_scale=default_image_scale(scale),
        schedule=default_schedule(scale, SCHEDULE),
    )
    config = _apply_overrides(config, overrides or {})
    from scnet.engine.semantic_classes import with_semantic_classes

    try:
        # The semantic head's classes come from the data (183 with COCO-stuff at paper scale) and are
        # part of the run id; whether the maps are there is checked before anything runs.
        return with_semantic_classes(config)
    except (ConfigError, ValueError) as exc:
        raise UsageError(f"--data {data_root}: {exc}") from None


def build_matrix(tables: Sequence[str], scale: str, data_root: Path, seeds: int = 1,
                 overrides: Mapping[str, Any] | None = None) -> list[RunSpec]:
    """Every run the tables need, deduplicated by run id, in table order."""
    if scale not in SCALES:
        raise UsageError(f"unknown scale {scale!r}; use one of {', '.join(SCALES)}")
    if seeds < 1:
        raise UsageError(f"--seeds {seeds}: need at least 1")
    configs: dict[str, RunConfig] = {}
    rows: dict[str, list[tuple[str, str]]] = {}
    for table in tables:
        for row in TABLES[table]:
            if not row.run:
                continue
            label = row.label if table != "table1" else f"{row.label} ({row.backbone})"
            for seed in range(seeds):
                config = run_config_for(row, scale, data_root, seed, overrides)
                run_id = config.run_id()
                configs.setdefault(run_id, config)
                if (table, label) not in rows.setdefault(run_id, []):
                    rows[run_id].append((table, label))
    return [RunSpec(configs[run_id], tuple(rows[run_id])) for run_id in configs]


def resolve_data_root(scale: str, data: str | None) -> Path:
    """The dataset folder for a scale, checked before anything runs.

    Smoke runs use the project's synthetic dataset (made on first use); paper runs need COCO 2017
    on disk, and a wrong path should fail here, not in the first job an hour into the queue.
    """
    if scale == "smoke":
        return Path(data).expanduser().resolve() if data else DEFAULT_SMOKE_DATA.resolve()
    if not data:
        raise UsageError("--scale paper needs --data PATH: the COCO 2017 root "
                         "(annotations/instances_{train,val}2017.json, train2017/, val2017/)")
    root = Path(data).expanduser().resolve()
    if not root.is_dir():
        raise UsageError(f"--data {data}: no such directory")
    missing = [name for name in COCO_FILES if not (root / name).exists()]
    if missing:
        raise UsageError(f"--data {data}: not a COCO 2017 root; missing {', '.join(missing)} under {root} "
                         "(expected annotations/instances_{train,val}2017.json, train2017/, val2017/)")
    return root
