"""The declared minimums (pyproject: Python >= 3.10, torch >= 2.3) are true of the code.

CI runs one Python and one torch, so the older ones are simulated: the profile reader with
`tomllib` missing (Python 3.10), the sources parsed with the 3.10 grammar, and no unguarded import
of a standard module that only 3.11 has.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("scnet", "experiments", "analysis", "benchmarks")
# Standard-library names added in 3.11 that a 3.10 interpreter lacks.
NEW_IN_311_MODULES = {"tomllib", "wsgiref.types"}
NEW_IN_311_NAMES = {("typing", "Self"), ("typing", "Never"), ("typing", "assert_never"), ("typing", "LiteralString"),
                    ("enum", "StrEnum"), ("datetime", "UTC"), ("contextlib", "chdir"), ("hashlib", "file_digest")}


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def _pyproject() -> str:
    return (REPO / "pyproject.toml").read_text(encoding="utf-8")


@pytest.mark.slow
def test_profiles_load_on_python_3_10_through_tomli():
    """With tomllib unimportable (as on 3.10), profile.py takes `tomli`, which pyproject requires there;
    here the stand-in `tomli` is the standard parser it was merged from."""
    script = (
        "import sys, tomllib\n"
        "sys.modules['tomli'] = tomllib\n"
        "sys.modules['tomllib'] = None  # import tomllib now raises ModuleNotFoundError\n"
        "from experiments import profile\n"
        "assert profile.tomllib.__name__ == 'tomllib' and sys.modules['tomllib'] is None\n"
        "p = profile.load_profile(sys.argv[1])\n"
        "print(p.partition, p.gpus_per_node)\n")
    done = subprocess.run([sys.executable, "-c", script, str(REPO / "slurm" / "profiles" / "example.toml")],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["gpu", "8"]


@pytest.mark.slow
def test_without_tomllib_or_tomli_the_import_fails_naming_tomli():
    script = ("import sys\nsys.modules['tomllib'] = None\nsys.modules['tomli'] = None\n"
              "import experiments.profile\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "tomli" in done.stderr


def test_pyproject_requires_tomli_below_3_11_and_torch_2_3():
    text = _pyproject()
    assert re.search(r'"tomli>=[\d.]+; python_version < \'3\.11\'"', text)
    torch = re.search(r'"torch>=(\d+)\.(\d+)"', text)
    assert torch and (int(torch[1]), int(torch[2])) >= (2, 3), "torch.amp.GradScaler('cuda') needs torch 2.3"
    vision = re.search(r'"torchvision>=0\.(\d+)"', text)
    assert vision and int(vision[1]) >= 18, "torchvision 0.18 is torch 2.3's release"
    assert 'requires-python = ">=3.10"' in text


def test_every_source_parses_with_the_python_3_10_grammar():
    for path in _sources():
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))


def _guarded(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside `try: ... except ImportError/ModuleNotFoundError`."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            names = {getattr(h.type, "id", None) for h in node.handlers}
            if names & {"ImportError", "ModuleNotFoundError"}:
                lines.update(n.lineno for stmt in node.body for n in ast.walk(stmt) if hasattr(n, "lineno"))
    return lines


def test_no_unguarded_import_of_a_3_11_only_standard_module():
    problems = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        guarded = _guarded(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                hits = [a.name for a in node.names if a.name in NEW_IN_311_MODULES]
            elif isinstance(node, ast.ImportFrom):
                hits = [f"{node.module}.{a.name}" for a in node.names
                        if node.module in NEW_IN_311_MODULES or (node.module, a.name) in NEW_IN_311_NAMES]
            else:
                continue
            if hits and node.lineno not in guarded:
                problems.append(f"{path.relative_to(REPO)}:{node.lineno}: {', '.join(hits)}")
    assert not problems, "Python 3.11+ only (pyproject says >= 3.10): " + "; ".join(problems)
