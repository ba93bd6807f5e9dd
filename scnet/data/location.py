"""Where a dataset lives, and the one place a missing one is made instead of reported.

Only the harness's default smoke path (`data/shapes`, relative to the working directory) is filled
with the synthetic dataset on first use. Anywhere else a missing folder is almost always a typo in
`--data`, and generating a dataset there would train on it without a word: it is an error that
says how to make one on purpose.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_SYNTHETIC_ROOT = Path("data/shapes")


def is_default_synthetic_root(root: str | os.PathLike[str]) -> bool:
    """True if `root` is the default smoke dataset path, however it is spelled."""
    return Path(root).expanduser().resolve() == DEFAULT_SYNTHETIC_ROOT.resolve()


def missing_dataset_problem(root: str | os.PathLike[str]) -> str | None:
    """None if `root` is a folder with an `annotations` folder, else one sentence saying what to do."""
    root = Path(root)
    how = (f"make a synthetic dataset there with `python -m scnet.data.synthetic --out {root}`, or leave "
           f"out --data to use {DEFAULT_SYNTHETIC_ROOT} (made on first use)")
    if not root.exists() and not root.is_symlink():
        return f"dataset folder {root} does not exist; check the path, or {how}"
    if not root.is_dir():
        from scnet.messages import path_kind

        return f"{root} is {path_kind(root)}, not a folder; point --data at a dataset root (COCO layout)"
    if not (root / "annotations").is_dir():
        return (f"{root} holds no annotations/ folder, so it is not a dataset in the COCO layout "
                f"(annotations/instances_<split>2017.json, <split>2017/); check the path, or {how}")
    return None
