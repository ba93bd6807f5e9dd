"""The paper's typed numbers: every row and column of Tables 1-5 and Figure 1, and spot values."""
from __future__ import annotations

import math

import pytest

from analysis.paper import load_paper_numbers, paper_lookup
from experiments.tables import TABLE_COLUMNS, TABLES

# Counted from the paper: rows (label, backbone) per table, in the paper's order.
EXPECTED_ROWS = {
    "table1": [("Mask R-CNN", "r50"), ("PANet", "r50"), ("LevelSet R-CNN", "r50"), ("BlendMask", "r50"),
               ("BMask R-CNN", "r50"), ("D2Det", "r101"),
               *[(m, b) for b in ("r50", "r101", "x101_64x4d") for m in ("Cascade Mask R-CNN", "HTC", "SCNet")]],
    "table2": [(r, "r50") for r in ("Cascade Mask R-CNN", "+ SC", "+ FR", "+ GC", "+ SC + FR", "+ SC + FR + GC",
                                     "Overall improvement")],
    "table3": [(r, "r50") for r in ("CM R-CNN", "CM R-CNN + naive SC", "CM R-CNN + effective SC")],
    "table4": [(r, "r50") for r in ("Mask R-CNN", "Mask R-CNN + FR", "Cascade Mask R-CNN",
                                     "Cascade Mask R-CNN + FR")],
    "table5": [(f"lambda={w}", "r50") for w in ("None", "0", "1", "2", "3", "5")],
    "figure1": [(r, "r50") for r in ("training w/o SC", "training w/ SC", "inference")],
}
EXPECTED_COLUMNS = {
    "table1": ["AP", "AP50", "AP75", "APS", "APM", "APL", "APbb", "speed_fps"],
    "table2": ["AP", "AP50", "AP75", "APbb", "speed_fps"],
    "table3": ["AP", "APbb", "speed_fps"],
    "table4": ["AP", "APbb", "speed_fps"],
    "table5": ["AP", "AP50", "AP75", "APS", "APM", "APL", "APbb"],
    "figure1": ["share_le_0.75"],
}


@pytest.fixture(scope="module")
def paper():
    return load_paper_numbers()


def test_every_row_and_column_once(paper):
    assert sorted(paper["table"].unique()) == sorted(EXPECTED_ROWS)
    assert not paper.duplicated(["table", "row", "backbone", "column"]).any()
    for table, rows in EXPECTED_ROWS.items():
        part = paper[paper["table"] == table]
        assert list(dict.fromkeys(zip(part["row"], part["backbone"]))) == rows, table
        for (row, backbone) in rows:
            cells = part[(part["row"] == row) & (part["backbone"] == backbone)]
            assert list(cells["column"]) == EXPECTED_COLUMNS[table], (table, row, backbone)
    assert len(paper) == sum(len(r) * len(EXPECTED_COLUMNS[t]) for t, r in EXPECTED_ROWS.items()) == 221


def test_dashes_are_blank_and_quoted_rows_marked(paper):
    lookup = paper_lookup()
    assert ("table1", "LevelSet R-CNN", "r50", "AP50") not in lookup
    assert lookup[("table1", "LevelSet R-CNN", "r50", "AP")] == 36.4
    assert ("table1", "PANet", "r50", "speed_fps") not in lookup
    assert ("table1", "D2Det", "r101", "APS") not in lookup
    blank = paper[paper["value"].isna()]
    assert len(blank) == 1 + 7 + 2 + 2 + 4  # PANet, LevelSet, BlendMask, BMask R-CNN, D2Det
    quoted = set(paper.loc[paper["source"] == "quoted", "row"])
    assert quoted == {"PANet", "LevelSet R-CNN", "BlendMask", "BMask R-CNN", "D2Det"}
    assert set(paper.loc[paper["source"] == "derived", "row"]) == {"Overall improvement"}


@pytest.mark.parametrize("key, value", [
    (("table1", "SCNet", "r50", "AP"), 40.2),
    (("table1", "SCNet", "r50", "APbb"), 45.0),
    (("table1", "SCNet", "r50", "speed_fps"), 6.2),
    (("table1", "Mask R-CNN", "r50", "APL"), 46.4),
    (("table1", "HTC", "x101_64x4d", "APM"), 44.0),
    (("table1", "Cascade Mask R-CNN", "r101", "APbb"), 45.3),
    (("table1", "D2Det", "r101", "APbb"), 45.4),
    (("table2", "+ SC", "r50", "speed_fps"), 6.5),
    (("table2", "+ GC", "r50", "APbb"), 44.5),
    (("table3", "CM R-CNN + naive SC", "r50", "AP"), 38.0),
    (("table4", "Mask R-CNN + FR", "r50", "speed_fps"), 7.4),
    (("table5", "lambda=3", "r50", "APS"), 22.1),
    (("table5", "lambda=None", "r50", "AP75"), 42.0),
    (("figure1", "training w/o SC", "r50", "share_le_0.75"), 49.1),
    (("figure1", "training w/ SC", "r50", "share_le_0.75"), 34.2),
    (("figure1", "inference", "r50", "share_le_0.75"), 38.5),
])
def test_spot_values(key, value):
    assert paper_lookup()[key] == value


def test_paper_is_consistent_with_itself():
    """Rows the paper prints twice agree, and Table 2's improvement row is its last minus first row."""
    v = paper_lookup()
    for column in EXPECTED_COLUMNS["table2"]:
        gain = v[("table2", "+ SC + FR + GC", "r50", column)] - v[("table2", "Cascade Mask R-CNN", "r50", column)]
        assert math.isclose(gain, v[("table2", "Overall improvement", "r50", column)], abs_tol=1e-9), column
    for column in ("AP", "APbb", "speed_fps"):
        base = v[("table2", "Cascade Mask R-CNN", "r50", column)]
        assert v[("table3", "CM R-CNN", "r50", column)] == base
        assert v[("table4", "Cascade Mask R-CNN", "r50", column)] == base
        assert v[("table4", "Cascade Mask R-CNN + FR", "r50", column)] == v[("table2", "+ FR", "r50", column)]
        assert v[("table3", "CM R-CNN + effective SC", "r50", column)] == v[("table2", "+ SC", "r50", column)]
    for column in ("AP", "AP50", "AP75", "APbb"):
        assert v[("table5", "lambda=3", "r50", column)] == v[("table2", "+ SC + FR + GC", "r50", column)]


def test_row_specs_and_paper_rows_are_the_same_set():
    spec_keys = {row.key for rows in TABLES.values() for row in rows}
    paper_keys = {(t, r, b) for t, rows in EXPECTED_ROWS.items() for r, b in rows}
    assert spec_keys == paper_keys
    assert {t: list(c) for t, c in TABLE_COLUMNS.items()} == EXPECTED_COLUMNS
