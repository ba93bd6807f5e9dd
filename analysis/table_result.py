"""A rebuilt paper table (paper value, our value, difference per cell) and its Markdown/LaTeX/CSV forms.

Formatting rules shared by all three outputs: numbers with one decimal as the paper prints them;
several seeds as "mean ± std"; a cell without a value (the paper's "-", a row quoted from other
work, a run that does not exist yet) stays empty, never 0 or NaN. Where rows are compared with a
baseline row, a "vs base" column gives our difference (the paper's in parentheses), marked when it lies
within the seeds' spread (`analysis.spread`); at paper scale a "zoo" column gives MMDetection's
model-zoo value where a row is a zoo model.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.spread import MARK
from scnet.records.files import write_text_atomic

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
    zoo: float | None = None  # MMDetection's model-zoo value where the row is a zoo model
    base_diff: float | None = None  # ours minus the baseline row's ours (a derived row: its own value)
    paper_base_diff: float | None = None  # the same difference in the paper's numbers
    within_spread: bool | None = None  # analysis.spread.within_spread of base_diff; None: not judged

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
    baseline: str | None = None  # the row this one is compared with (experiments.tables.RowSpec.baseline)

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


def _vs_base(cell: Cell) -> str:
    """"+0.3 ≈ (+1.4)": our difference from the baseline, its mark, the paper's difference."""
    ours = _num(cell.base_diff, signed=True)
    if ours and cell.within_spread:
        ours += f" {MARK}"
    paper = _num(cell.paper_base_diff, signed=True)
    return " ".join(part for part in (ours, f"({paper})" if paper else "") if part)


def _latex_escape(text: str) -> str:
    for old, new in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                     ("<=", r"$\leq$"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("−", "$-$"),
                     (MARK, r"$\approx$")):
        text = text.replace(old, new)
    return text


# Columns for which MMDetection's model zoo publishes a number (mask AP and box AP).
ZOO_COLUMNS = ("AP", "APbb")


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
        if self.compares_rows:
            parts.append("vs base: ours minus the row's baseline row (the paper's difference in parentheses).")
        if self.has_zoo:
            parts.append("zoo: MMDetection's model-zoo value for the same network and schedule "
                         "(results/paper/mmdet_zoo.csv).")
        parts.extend(self.notes)
        return " ".join(parts)

    @property
    def compares_rows(self) -> bool:
        return any(row.baseline or row.status == "derived" for row in self.rows)

    @property
    def has_zoo(self) -> bool:
        return any(row.cells[c].zoo is not None for row in self.rows for c in self.columns)

    def _sub_columns(self, column: str) -> list[str]:
        """The cells shown under one metric, in order."""
        names = ["paper", "ours", "Δ"]
        if self.has_zoo and column in ZOO_COLUMNS:
            names.append("zoo")
        if self.compares_rows:
            names.append("vs base")
        return names

    @staticmethod
    def _text(cell: Cell, sub: str, pm: str) -> str:
        if sub == "paper":
            return _num(cell.paper)
        if sub == "ours":
            return _ours(cell, pm)
        if sub == "Δ":
            return _num(cell.diff, signed=True)
        if sub == "zoo":
            return _num(cell.zoo)
        return _vs_base(cell)

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
                    "diff": cell.diff, "zoo": cell.zoo, "baseline": row.baseline or "",
                    "vs_base": cell.base_diff, "vs_base_paper": cell.paper_base_diff,
                    "within_spread": "" if cell.within_spread is None else cell.within_spread,
                })
        return pd.DataFrame.from_records(records).astype(
            {"paper": float, "ours": float, "ours_std": float, "diff": float, "zoo": float, "vs_base": float,
             "vs_base_paper": float})

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
            head += [f"{label} {sub}" for sub in self._sub_columns(column)]
        align = ["---"] * (len(self._head()) - 1) + ["---:"] * (len(head) - len(self._head()) + 1)
        lines = [f"**{self.caption}**", "", "| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
        for row in self.rows:
            values = self._lead(row)
            for column in self.columns:
                values += [self._text(row.cells[column], sub, " ± ") for sub in self._sub_columns(column)]
            lines.append("| " + " | ".join(v.replace("|", "\\|") for v in values) + " |")
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        lead = len(self._head())
        widths = [len(self._sub_columns(c)) for c in self.columns]
        spec = "l" * lead + "".join("r" * w for w in widths)
        top = " & ".join([""] * lead + [rf"\multicolumn{{{w}}}{{c}}{{{_LATEX_LABELS.get(c, _latex_escape(COLUMN_LABELS.get(c, c)))}}}"
                                        for c, w in zip(self.columns, widths)])
        starts = [lead + 1 + sum(widths[:i]) for i in range(len(widths))]
        rules = " ".join(rf"\cmidrule(lr){{{a}-{a + w - 1}}}" for a, w in zip(starts, widths))
        subs = [_latex_escape(sub) for c in self.columns for sub in self._sub_columns(c)]
        sub = " & ".join(self._head() + subs)
        body = []
        for row in self.rows:
            values = [_latex_escape(v) for v in self._lead(row)]
            for column in self.columns:
                values += [_latex_escape(self._text(row.cells[column], s, "±")) for s in self._sub_columns(column)]
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
