"""keep_freed_memory() must make repeated large allocations reuse pages (fewer page faults)."""
from __future__ import annotations

import subprocess
import sys

import pytest

_ROUNDS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from scnet.cpu_memory import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):  # like one inference after another: the same large tensors, made and freed
    before = faults()
    a = torch.ones(16_000_000); b = torch.ones(10_000_000); c = a + 1
    del a, b, c
print(faults() - before)
"""


def _faults_in_last_round(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused():
    default, kept = _faults_in_last_round("default"), _faults_in_last_round("keep")
    assert default > 20_000  # the default really faults in fresh pages for each round
    assert kept < 0.6 * default
