"""The paper's typed numbers (results/paper/paper_numbers.csv) as a DataFrame and a lookup."""
from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import pandas as pd

PAPER_CSV = Path(__file__).resolve().parents[1] / "results" / "paper" / "paper_numbers.csv"
_COLUMNS = ("table", "row", "backbone", "column", "value", "source", "dataset")


def load_paper_numbers(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """One line per paper cell; `value` is float, NaN where the paper prints "-"."""
    return _load(str(Path(path) if path else PAPER_CSV)).copy()


@lru_cache(maxsize=4)
def _load(path: str) -> pd.DataFrame:
    return read_reference_csv(path, _COLUMNS, "the paper's numbers")


def read_reference_csv(path: str, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    """A CSV of reference numbers shipped under results/paper/: `value` as float (blank: NaN), every
    other cell as text; a missing file or column is an error naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: {what} are missing; they ship with the repository under results/paper/ "
                                "(pass the file's path if you moved it)")
    frame = pd.read_csv(path, dtype={"value": float}, keep_default_na=False, na_values={"value": [""]})
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(columns)}")
    return frame


def paper_lookup(path: str | os.PathLike | None = None) -> dict[tuple[str, str, str, str], float]:
    """(table, row, backbone, column) -> value; cells printed as "-" are absent."""
    frame = load_paper_numbers(path)
    return {(t, r, b, c): float(v)
            for t, r, b, c, v in frame[["table", "row", "backbone", "column", "value"]].itertuples(index=False)
            if not math.isnan(v)}
