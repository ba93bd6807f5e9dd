"""A rebuilt paper table (paper value, our value, difference per cell) and its Markdown/LaTeX/CSV forms.

Formatting rules shared by all three outputs: numbers with one decimal as the paper prints them;
several seeds as "mean ± std"; a cell without a value (the paper's "-", a row quoted from other
work, a run that does not exist yet) stays empty, never 0 or NaN.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from scnet.records import write_text_atomic

COLUMN_LABELS = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "APS": "APS", "APM": "APM", "APL": "APL",
                 "APbb": "APbb", "speed_fps": "Speed (fps)", "share_le_0.75": "<= 0.75 (%)"}
_LATEX_LABELS = {"AP50": "AP$_{50}$", "AP75": "AP$_{75}$", "APS": "AP$_S$", "APM": "AP$_M$", "APL": "AP$_L$",
                 "APbb": "AP$^{bb}$"}


@dataclass(frozen=True)
class Cell:
    """One (row, column): the paper's number and ours over `n` seeds; None where there is none."""

    paper: float | None
    ours: float | None
    std: float | None
    n: int

    @property
    def diff(self) -> float | None:
        if self.paper is None or self.ours is None:
            return None
        return self.ours - self.paper


@dataclass(frozen=True)
class RowResult:
    label: str
    backbone: str
    status: str  # "run" (this project runs it), "quoted" (other work), "derived" (difference of rows)
    seeds: tuple[int, ...]
    run_dirs: tuple[str, ...]
    cells: dict[str, Cell]

    @property
    def runs_text(self) -> str:
        return self.status if self.status != "run" else str(len(self.seeds))


def _num(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = f"{value:+.1f}" if signed else f"{value:.1f}"
    return "+0.0" if text == "-0.0" and signed else ("0.0" if text == "-0.0" else text)


def _ours(cell: Cell, pm: str) -> str:
    if cell.ours is None:
        return ""
    if cell.std is None:
        return _num(cell.ours)
    return f"{_num(cell.ours)}{pm}{_num(cell.std)}"


def _latex_escape(text: str) -> str:
    for old, new in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                     ("<=", r"$\leq$"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("−", "$-$")):
        text = text.replace(old, new)
    return text


@dataclass(frozen=True)
class TableResult:
    name: str
    scale: str
    title: str
    columns: tuple[str, ...]
    rows: list[RowResult]
    show_backbone: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def caption(self) -> str:
        number = self.name.replace("table", "Table ")
        parts = [f"{number} ({self.scale} scale). {self.title}.",
                 "Paper: the value printed in the paper; ours: mean ± std over seeds (Runs = seeds found);",
                 "Δ = ours − paper; an empty cell has no value (no finished run, or '-' in the paper)."]
        parts.extend(self.notes)
        return " ".join(parts)

    def cell(self, label: str, column: str, backbone: str | None = None) -> Cell:
        """The cell of a row label (and backbone, for Table 1) and a column; KeyError if absent."""
        for row in self.rows:
            if row.label == label and (backbone is None or row.backbone == backbone):
                return row.cells[column]
        raise KeyError(f"{self.name}: no row {label!r}" + (f" with backbone {backbone!r}" if backbone else ""))

    def to_frame(self) -> pd.DataFrame:
        """Long format: a line per (row, column), numbers as floats with NaN where empty."""
        records = []
        for row in self.rows:
            for column in self.columns:
                cell = row.cells[column]
                records.append({
                    "table": self.name, "scale": self.scale, "row": row.label, "backbone": row.backbone,
                    "status": row.status, "runs": len(row.seeds), "column": column,
                    "paper": cell.paper, "ours": cell.ours, "ours_std": cell.std, "ours_n": cell.n,
                    "diff": cell.diff,
                })
        return pd.DataFrame.from_records(records).astype(
            {"paper": float, "ours": float, "ours_std": float, "diff": float})

    def to_csv(self) -> str:
        buffer = io.StringIO()
        self.to_frame().to_csv(buffer, index=False, na_rep="", float_format="%.4g", lineterminator="\n")
        return buffer.getvalue()

    def _head(self) -> list[str]:
        return ["Row", *(["Backbone"] if self.show_backbone else []), "Runs"]

    def _lead(self, row: RowResult) -> list[str]:
        return [row.label, *([row.backbone] if self.show_backbone else []), row.runs_text]

    def to_markdown(self) -> str:
        head = self._head()
        for column in self.columns:
            label = COLUMN_LABELS.get(column, column)
            head += [f"{label} paper", f"{label} ours", f"{label} Δ"]
        align = ["---"] * (len(self._head()) - 1) + ["---:"] * (1 + 3 * len(self.columns))
        lines = [f"**{self.caption}**", "", "| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
        for row in self.rows:
            values = self._lead(row)
            for column in self.columns:
                cell = row.cells[column]
                values += [_num(cell.paper), _ours(cell, " ± "), _num(cell.diff, signed=True)]
            lines.append("| " + " | ".join(v.replace("|", "\\|") for v in values) + " |")
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        lead = len(self._head())
        spec = "l" * lead + "rrr" * len(self.columns)
        top = " & ".join([""] * lead + [rf"\multicolumn{{3}}{{c}}{{{_LATEX_LABELS.get(c, _latex_escape(COLUMN_LABELS.get(c, c)))}}}"
                                        for c in self.columns])
        rules = " ".join(rf"\cmidrule(lr){{{lead + 3 * i + 1}-{lead + 3 * i + 3}}}" for i in range(len(self.columns)))
        sub = " & ".join(self._head() + ["paper", "ours", r"$\Delta$"] * len(self.columns))
        body = []
        for row in self.rows:
            values = [_latex_escape(v) for v in self._lead(row)]
            for column in self.columns:
                cell = row.cells[column]
                values += [_num(cell.paper), _latex_escape(_ours(cell, "±")), _num(cell.diff, signed=True)]
            body.append(" & ".join(values) + r" \\")
        return "\n".join([
            r"% needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
            rf"\caption{{{_latex_escape(self.caption)}}}",
            rf"\label{{tab:{self.name}-{self.scale}}}",
            rf"\begin{{tabular}}{{{spec}}}", r"\toprule", top + r" \\", rules, sub + r" \\", r"\midrule",
            *body, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])

    def write(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write `{name}_{scale}.md/.tex/.csv` atomically; returns the paths."""
        out = Path(out_dir)
        stem = f"{self.name}_{self.scale}"
        return [write_text_atomic(out / f"{stem}.md", self.to_markdown()),
                write_text_atomic(out / f"{stem}.tex", self.to_latex()),
                write_text_atomic(out / f"{stem}.csv", self.to_csv())]
