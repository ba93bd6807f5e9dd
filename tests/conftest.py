"""Fixtures shared by several test modules."""
from __future__ import annotations

import subprocess

import pytest
import torch


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
