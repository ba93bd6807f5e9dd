"""A SLURM cluster profile: the TOML file that says where and how big the jobs are.

Kept separate from the run config on purpose: where a run is trained never changes its identity.
Validation is strict and names the file and the key, because a misspelt `partiton` silently
ignored would put eight-GPU jobs on the wrong queue; see slurm/profiles/example.toml for every key.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.runspec import UsageError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package (pyproject pins it for < 3.11)
    import tomli as tomllib

# key -> (types accepted, what to write in the error message)
_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "partition": ((str,), "a string"),
    "account": ((str,), "a string"),
    "qos": ((str,), "a string"),
    "constraint": ((str,), "a string"),
    "time": ((str, int), "minutes (int) or a string like '2-00:00:00' / '48:00:00'"),
    "nodes": ((int,), "an integer >= 1"),
    "gpus_per_node": ((int, str), "an integer >= 0, or 'TYPE:N' such as 'a100:8'"),
    "gres": ((str,), "a generic resource string such as 'gpu:8' or 'gpu:a100:8'"),
    "gpus_per_task": ((int, str), "an integer >= 1, or 'TYPE:N'"),
    "gpus": ((int, str), "the job's total GPUs (all nodes): an integer >= 1, or 'TYPE:N'"),
    "cpus_per_task": ((int,), "an integer >= 1"),
    "mem_gb": ((int, float), "a number of GB per node"),
    "array_parallelism": ((int,), "an integer >= 1"),
    "signal_delay_s": ((int,), "an integer >= 1"),
    "max_requeue": ((int,), "an integer >= 0"),
    "setup": ((list,), "a list of shell lines"),
    "python": ((str,), "a command that starts Python on the compute nodes"),
    "sbatch": ((dict,), "a table of extra sbatch options"),
}


class ProfileError(UsageError):
    """A profile file that cannot be used as written."""


@dataclass(frozen=True)
class SlurmProfile:
    """Where the jobs go and what each one asks for; one task per GPU (one task if no GPU).

    However the profile spells its GPUs (gpus_per_node, gres, gpus_per_task, gpus), they are held
    here as `gpus_per_node`, and the job asks for that many tasks per node."""

    source: str = "<defaults>"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = 60
    nodes: int = 1
    gpus_per_node: int = 0
    gpu_type: str | None = None  # 'a100' in gres = "gpu:a100:8"
    gpu_spelling: str = "gpus_per_node"  # how sbatch is asked: "gpus_per_node" or "gres"
    other_gres: tuple[str, ...] = ()  # non-GPU entries of `gres`, passed on as written
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int = 64
    signal_delay_s: int = 120
    max_requeue: int = 10
    setup: tuple[str, ...] = ()
    python: str | None = None
    sbatch: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks_per_node(self) -> int:
        return max(1, self.gpus_per_node)

    @property
    def world_size(self) -> int:
        """Training processes of one run: one per GPU on every node (one in all without GPUs)."""
        return self.nodes * self.tasks_per_node

    def gpu_request(self) -> tuple[str, int | str] | None:
        """The GPU request as (sbatch option, value): --gres when the profile wrote `gres` (some
        sites honour only that), else --gpus-per-node, which keeps all of a node's GPUs visible to
        all its tasks (NCCL peer-to-peer between them; --gpus-per-task would hide them)."""
        if not self.gpus_per_node and not self.other_gres:
            return None
        typed = f"{self.gpu_type}:{self.gpus_per_node}" if self.gpu_type else str(self.gpus_per_node)
        if self.gpu_spelling == "gres":
            entries = ([f"gpu:{typed}"] if self.gpus_per_node else []) + list(self.other_gres)
            return "gres", ",".join(entries)
        if not self.gpus_per_node:
            return "gres", ",".join(self.other_gres)
        return "gpus_per_node", typed if self.gpu_type else self.gpus_per_node

    def srun_args(self) -> list[str]:
        """Options for the srun that starts the tasks. Slurm 22.05-23.02's srun does not inherit
        --cpus-per-task from sbatch (each task would get one core and starve its data loaders);
        --kill-on-bad-exit ends every task as soon as one fails, instead of leaving the others
        blocked in a collective until its timeout."""
        args = ["--kill-on-bad-exit=1"]
        if self.cpus_per_task is not None:
            args.append(f"--cpus-per-task={self.cpus_per_task}")
        return args

    def resources(self) -> dict[str, Any]:
        """What one run asks of the cluster, in words a cluster admin reads (for --dry-run)."""
        return {"nodes": self.nodes, "tasks": self.world_size, "gpus": self.nodes * self.gpus_per_node,
                "gpu_type": self.gpu_type, "cpus_per_task": self.cpus_per_task,
                "cpus": self.world_size * self.cpus_per_task if self.cpus_per_task else None,
                "mem_per_node": _mem(self.mem_gb) if self.mem_gb is not None else None,
                "time_min": self.time_min}

    def submitit_parameters(self, job_name: str) -> dict[str, Any]:
        """Keyword arguments for `submitit.SlurmExecutor.update_parameters`."""
        params: dict[str, Any] = {
            "job_name": job_name,
            "time": self.time_min,
            "nodes": self.nodes,
            "ntasks_per_node": self.tasks_per_node,
            "signal_delay_s": self.signal_delay_s,
            "array_parallelism": self.array_parallelism,
        }
        for key in ("partition", "account", "qos", "constraint", "cpus_per_task"):
            value = getattr(self, key)
            if value is not None:
                params[key] = value
        request = self.gpu_request()
        if request is not None:
            params[request[0]] = request[1]
        if self.mem_gb is not None:
            params["mem"] = _mem(self.mem_gb)
        if self.setup:
            params["setup"] = list(self.setup)
        params["srun_args"] = self.srun_args()
        if self.sbatch:
            params["additional_parameters"] = dict(self.sbatch)
        return params

    def sbatch_flags(self) -> list[str]:
        """The profile's own part of the request as sbatch flags, for reading it at a glance (the tests
        do). `sbatch --test-only` checks the whole script instead (`SlurmExecutor.batch_script`)."""
        flags = [f"--time={self.time_min}", f"--nodes={self.nodes}", f"--ntasks-per-node={self.tasks_per_node}"]
        for key in ("partition", "account", "qos", "constraint"):
            value = getattr(self, key)
            if value is not None:
                flags.append(f"--{key}={value}")
        if self.cpus_per_task is not None:
            flags.append(f"--cpus-per-task={self.cpus_per_task}")
        request = self.gpu_request()
        if request is not None:
            flags.append(f"--{request[0].replace('_', '-')}={request[1]}")
        if self.mem_gb is not None:
            flags.append(f"--mem={_mem(self.mem_gb)}")
        for key, value in self.sbatch.items():
            flag = "--" + key.replace("_", "-")
            flags.append(flag if value is True else f"{flag}={value}")
        return flags


def _mem(gb: float) -> str:
    return f"{int(gb)}G" if float(gb).is_integer() else f"{int(gb * 1024)}M"


def parse_time_minutes(value: str | int, where: str) -> int:
    """SLURM time formats: minutes, 'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM', 'D-HH:MM:SS'."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ProfileError(f"{where}: 'time' must be >= 1 minute, found {value}")
        return value
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise ProfileError(f"{where}: 'time' = {value!r} is not a SLURM time; write minutes (120) "
                           "or '2-00:00:00' (days-hours:minutes:seconds) or '48:00:00'")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    elif second is not None:  # MM:SS
        seconds = int(first) * 60 + int(second)
    else:  # minutes
        seconds = int(first) * 60
    minutes = -(-seconds // 60)
    if minutes < 1:
        raise ProfileError(f"{where}: 'time' = {value!r} is shorter than a minute")
    return minutes


def load_profile(path: str | Path) -> SlurmProfile:
    """Read and validate a profile; every problem names the file, the key and the fix."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"profile {path}: file not found (copy slurm/profiles/example.toml and edit it)") from None
    except IsADirectoryError:
        raise ProfileError(f"profile {path}: a folder, not a file; give the profile's .toml file "
                           "(e.g. slurm/profiles/example.toml)") from None
    except UnicodeDecodeError as exc:
        raise ProfileError(f"profile {path}: not UTF-8 text (byte {exc.start}); a profile is a TOML text file "
                           "(see slurm/profiles/example.toml)") from None
    except OSError as exc:
        raise ProfileError(f"profile {path}: cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {path}: not valid TOML: {exc}") from None
    return profile_from_dict(raw, str(path))


def profile_from_dict(raw: dict[str, Any], source: str) -> SlurmProfile:
    unknown = [key for key in raw if key not in _KEYS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, _KEYS, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ProfileError(f"profile {source}: unknown key {key!r}{hint} "
                           f"(known keys: {', '.join(sorted(_KEYS))})")
    for key, value in raw.items():
        types, expected = _KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ProfileError(f"profile {source}: {key!r} must be {expected}, found {value!r}")
        _check_characters(key, value, source)
    values: dict[str, Any] = {"source": source}
    for key in ("partition", "account", "qos", "constraint", "python"):
        if raw.get(key):  # an empty string means "cluster default"
            values[key] = raw[key]
    if "time" in raw:
        values["time_min"] = parse_time_minutes(raw["time"], f"profile {source}")
    values.update(_gpus(raw, source))
    minimums = {"nodes": 1, "cpus_per_task": 1, "array_parallelism": 1, "signal_delay_s": 1, "max_requeue": 0}
    for key, low in minimums.items():
        if key in raw:
            if raw[key] < low:
                raise ProfileError(f"profile {source}: {key!r} must be >= {low}, found {raw[key]}")
            values[key] = raw[key]
    if "mem_gb" in raw:
        # Below 1 MiB sbatch would get --mem=0M, which SLURM reads as "all the node's memory".
        if not math.isfinite(raw["mem_gb"]) or raw["mem_gb"] * 1024 < 1:
            raise ProfileError(f"profile {source}: 'mem_gb' must be at least 1/1024 (1 MiB; 0 would ask SLURM "
                               f"for the whole node), found {raw['mem_gb']}")
        values["mem_gb"] = float(raw["mem_gb"])
    if "setup" in raw:
        if not all(isinstance(line, str) for line in raw["setup"]):
            raise ProfileError(f"profile {source}: 'setup' must be a list of strings (shell lines)")
        values["setup"] = tuple(raw["setup"])
    if "sbatch" in raw:
        values["sbatch"] = _sbatch_options(raw["sbatch"], source)
    return SlurmProfile(**values)


def _check_characters(key: str, value: Any, source: str) -> None:
    """No NUL byte anywhere (no command line or script can carry one), and no control characters in
    values that become sbatch options (a newline would start another #SBATCH line); shell lines of
    `setup` may hold tabs."""
    texts = [value] if isinstance(value, str) else list(value) if isinstance(value, list) else \
        [*value, *value.values()] if isinstance(value, dict) else []
    for text in (t for t in texts if isinstance(t, str)):
        bad = "\0" in text or (key != "setup" and any(ord(c) < 32 or ord(c) == 127 for c in text))
        if bad:
            raise ProfileError(f"profile {source}: {key!r} holds a NUL byte or a control character "
                               f"({text!r:.80}); remove it")


_GPU_KEYS = ("gpus_per_node", "gres", "gpus_per_task", "gpus")


def _typed_count(value: int | str, key: str, source: str, low: int) -> tuple[str | None, int]:
    """8 -> (None, 8); 'a100:8' -> ('a100', 8); the TYPE:N form sbatch takes for --gpus* options."""
    if isinstance(value, int):
        count, kind = value, None
    else:
        match = re.fullmatch(r"\s*(?:([A-Za-z0-9_.-]+):)?(\d+)\s*", value)
        if not match:
            raise ProfileError(f"profile {source}: {key!r} = {value!r} is not a GPU count; write 8 or 'a100:8'")
        kind, count = match.group(1), int(match.group(2))
    if count < low:
        raise ProfileError(f"profile {source}: {key!r} must be >= {low}, found {value!r}")
    return kind, count


def _parse_gres(value: str, source: str) -> tuple[str | None, int, tuple[str, ...]]:
    """'gpu:a100:8,nvme:1' -> ('a100', 8, ('nvme:1',)); 'gpu' alone is one GPU, as in sbatch."""
    kind, count, others, seen = None, 0, [], False
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        name, _, rest = entry.removeprefix("gres/").partition(":")
        if name != "gpu":
            others.append(entry)
            continue
        if seen:
            raise ProfileError(f"profile {source}: 'gres' = {value!r} names gpu twice; write it once")
        seen = True
        fields = rest.split(":") if rest else []
        if len(fields) > 2 or (fields and not fields[-1].isdigit() and len(fields) == 2):
            raise ProfileError(f"profile {source}: 'gres' entry {entry!r} is not gpu[:TYPE][:COUNT]")
        if fields and fields[-1].isdigit():
            count = int(fields[-1])
            kind = fields[0] if len(fields) == 2 else None
        else:
            count, kind = 1, (fields[0] if fields else None)
    return kind, count, tuple(others)


def _gpus(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Every common way of asking for GPUs, as GPUs per node (the harness runs one task per GPU).

    gpus_per_node = N / gres = "gpu[:TYPE]:N": N per node. gpus_per_task = N: N for the one task a
    node would run (so N tasks of one GPU). gpus = N: N over all nodes, split evenly.
    """
    given = [key for key in _GPU_KEYS if key in raw]
    if len(given) > 1:
        raise ProfileError(f"profile {source}: GPUs are asked for twice ({' and '.join(repr(k) for k in given)}); "
                           "keep one (the harness runs one task per GPU whichever you use)")
    if not given:
        return {}
    key = given[0]
    nodes = raw.get("nodes", 1) if isinstance(raw.get("nodes", 1), int) else 1
    if key == "gres":
        kind, count, others = _parse_gres(raw["gres"], source)
        return {"gpus_per_node": count, "gpu_type": kind, "gpu_spelling": "gres", "other_gres": others}
    kind, count = _typed_count(raw[key], key, source, low=0 if key == "gpus_per_node" else 1)
    if key == "gpus":
        if count % nodes:
            raise ProfileError(f"profile {source}: 'gpus' = {raw[key]!r} does not split evenly over "
                               f"{nodes} nodes; write gpus_per_node instead")
        count //= nodes
    return {"gpus_per_node": count, "gpu_type": kind}


# Options the harness sets itself; setting them under [sbatch] would break logs, arrays or requeue.
_RESERVED_SBATCH = {"array", "output", "error", "open-mode", "signal", "job-name", "wrap", "hold"}
# sbatch options that the profile spells as top-level keys.
_OWN_KEYS = {"partition": "partition", "account": "account", "qos": "qos", "constraint": "constraint",
             "time": "time", "nodes": "nodes", "gpus-per-node": "gpus_per_node", "cpus-per-task": "cpus_per_task",
             "mem": "mem_gb", "ntasks-per-node": "gpus_per_node", "ntasks": "gpus_per_node",
             "ntasks-per-gpu": "gpus_per_node", "gres": "gres", "gpus": "gpus", "gpus-per-task": "gpus_per_task",
             "cpus-per-gpu": "cpus_per_task"}


def _sbatch_options(table: dict[str, Any], source: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("_", "-")
        if name in _RESERVED_SBATCH:
            raise ProfileError(f"profile {source}: [sbatch] {key!r} is set by the harness "
                               "(logs, arrays and requeue depend on it); remove it")
        if name in _OWN_KEYS:
            raise ProfileError(f"profile {source}: [sbatch] {key!r} has its own top-level key; "
                               f"write `{_OWN_KEYS[name]} = ...` above the [sbatch] table")
        if isinstance(value, bool):
            if value:
                options[name] = True
            continue
        if not isinstance(value, (str, int, float)):
            raise ProfileError(f"profile {source}: [sbatch] {key!r} must be a string, number or true, "
                               f"found {value!r}")
        options[name] = value
    return options
