"""Fixtures shared by several test modules, and how pytest-xdist spreads the suite over the cores.

`python -m pytest` runs one worker per core (at most 4; `-n 0` runs in this process). A module's tests
stay together on one worker, in order, so its module fixtures (smoke trainings, SLURM jobs) run once;
a module marked `independent` (the R50 oracles: each test builds its own model) is spread test by
test. Work units holding slow tests go first, so the short ones fill the cores at the end instead of
one long module running alone.
"""
from __future__ import annotations

import os
import subprocess

import pytest
import torch

MAX_WORKERS = 4  # an R50 oracle test peaks at about 3 GB of memory


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return max(1, min(_cores(), MAX_WORKERS))


def pytest_configure(config: pytest.Config) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # the cores shared out: torch would start one thread per core in every worker
        torch.set_num_threads(max(1, _cores() // workers))


def _unit(item: pytest.Item) -> str:
    """The work unit xdist schedules: the module, or the test itself in an `independent` module."""
    module = item.nodeid.split("::")[0]
    return item.nodeid if item.get_closest_marker("independent") else module


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not item.get_closest_marker("independent"):
            item.add_marker(pytest.mark.xdist_group(_unit(item)))
    slow_units = {_unit(item) for item in items if item.get_closest_marker("slow")}
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(_unit(item), index)
    # Stable, so a unit's tests keep their order. Longest first, roughly: slow modules, then slow
    # independent tests (an oracle case: 10-30 s), then the rest, each in collection order.
    items.sort(key=lambda item: (_unit(item) not in slow_units, bool(item.get_closest_marker("independent")),
                                 first_seen[_unit(item)]))


@pytest.fixture()
def two_threads():
    """Run the test on 2 CPU threads, as MMDetection's oracles were computed. Convolution reductions
    are reassociated with another thread count, which moves boxes by ~0.1 px and gradient norms by up to
    3e-4: harmless on trained weights, but the random reference weights give thin masks that such a
    shift can push past the matching rule."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def harness(capsys):
    """`python -m experiments.run ARGS` in this process, answering as `subprocess.run` would (exit status,
    stdout, stderr): argument checks and dry runs need no process of their own. Tests of locks, signals
    and kill-and-resume start real processes."""
    from experiments.run import main

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()  # what the test printed before is not the command's
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own errors: one line, exit 2
            code = exc.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["python", "-m", "experiments.run", *args], code, out.out, out.err)

    return run
