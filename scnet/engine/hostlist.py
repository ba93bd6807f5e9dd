"""SLURM host lists ('gpu[01-03,07],rack[1-2]-node[01-02]') expanded to host names.

The rendezvous address of a multi-node job is the first host of SLURM_JOB_NODELIST, so a wrong
expansion sends every rank to a host that does not exist. `scontrol show hostnames` is Slurm's own
answer (computed on the client, no controller call) and has the last word on a list; the parser here
checks the list first (scontrol answers some malformed lists with exit 0 and a wrong host) and is
the answer on machines without scontrol. Its grammar: top-level commas separate expressions, each expression
is text with any number of bracket groups, a group is a comma list of numbers or `lo-hi` ranges
(zero padding kept from `lo`), and several groups expand as a product, the last varying fastest
(rack1-node01, rack1-node02, rack2-node01, ...).
"""
from __future__ import annotations

import itertools
import re
import shutil
import subprocess

_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def expand_hostlist(hostlist: str, *, use_scontrol: bool = True) -> list[str]:
    """Every host name of `hostlist`, in Slurm's order; ValueError naming the list if it is malformed."""
    hosts = parse_hostlist(hostlist)  # also the check: scontrol prints garbage for some malformed lists
    if use_scontrol:
        return _scontrol_hostnames(hostlist.strip()) or hosts
    return hosts


def _scontrol_hostnames(text: str) -> list[str] | None:
    """scontrol's expansion, or None when it is absent or fails (it exits 0 on a malformed list
    but prints nothing to stdout, so an empty answer is a failure too)."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return None
    try:
        done = subprocess.run([scontrol, "show", "hostnames", text], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    hosts = done.stdout.split()
    return hosts if done.returncode == 0 and hosts else None


def parse_hostlist(hostlist: str) -> list[str]:
    """The pure-Python expansion of a Slurm host list (see the module docstring for the grammar)."""
    hosts: list[str] = []
    for expression in _split_top_level(hostlist.strip(), hostlist):
        hosts.extend(_expand_expression(expression, hostlist))
    if not hosts:
        raise ValueError(f"host list {hostlist!r}: no host names found")
    return hosts


def _split_top_level(text: str, whole: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"host list {whole!r}: nested '[' at position {i}")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"host list {whole!r}: ']' without '[' at position {i}")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"host list {whole!r}: '[' without ']'")
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def _expand_expression(expression: str, whole: str) -> list[str]:
    """'rack[1-2]-node[01-02]' -> the product of its literal pieces and bracket groups."""
    pieces: list[list[str]] = []
    for match in re.finditer(r"([^\[]*)(?:\[([^\]]*)\])?", expression):
        literal, group = match.group(1), match.group(2)
        if literal:
            pieces.append([literal])
        if group is not None:
            pieces.append(_expand_group(group, whole))
    return ["".join(combo) for combo in itertools.product(*pieces)]


def _expand_group(group: str, whole: str) -> list[str]:
    values: list[str] = []
    for item in group.split(","):
        match = _RANGE.fullmatch(item.strip())
        if not match:
            raise ValueError(f"host list {whole!r}: [{group}] holds {item!r}, not a number or lo-hi range")
        low, high = match.group(1), match.group(2)
        if high is None:
            values.append(low)
            continue
        if int(high) < int(low):
            raise ValueError(f"host list {whole!r}: range {item!r} runs backwards")
        width = len(low)
        values.extend(f"{number:0{width}d}" for number in range(int(low), int(high) + 1))
    return values
