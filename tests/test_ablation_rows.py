"""Each table row differs from its baseline row only in the components it names.

For every row with a baseline, the resolved `ModelConfig` fields that differ from the baseline's are
listed and compared with `experiments.tables.COMPONENT_FIELDS` of the row's components: no field outside
them may differ, and every component must change at least one of its fields. The test prints the lists.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from experiments.tables import (ABLATION_BASE, COMPONENT_FIELDS, PAPER_TEST_PROTOCOL, TABLES, RowSpec,
                                baseline_of, differences_from_baseline, model_config_for, preset_for)
from experiments.runspec import build_matrix
from scnet.presets import resolve_config

COMPARED = [row for rows in TABLES.values() for row in rows if row.baseline is not None]


def unexplained(row: RowSpec, scale: str, baseline: RowSpec | None = None) -> list[str]:
    """What is wrong with `row`'s difference from its baseline (empty: it changes only its components)."""
    differing = set(differences_from_baseline(row, scale, baseline))
    allowed = {name for component in row.components for name in COMPONENT_FIELDS[component]}
    problems = [f"{name} differs but is not part of {row.components}" for name in sorted(differing - allowed)]
    problems += [f"component {c!r} changes none of {COMPONENT_FIELDS[c]}" for c in row.components
                 if not differing & set(COMPONENT_FIELDS[c])]
    return problems


def test_every_compared_row_has_a_baseline_in_its_table():
    assert len(COMPARED) == 20  # Table 1: 2 x 3 backbones, Table 2: 5, Table 3: 2, Table 4: 2, Table 5: 5
    for row in COMPARED:
        base = baseline_of(row)
        assert base is not None and base.table == row.table and base.backbone == row.backbone and base.run


@pytest.mark.parametrize("scale", ["paper", "smoke"])
def test_each_row_differs_from_its_baseline_only_in_its_components(scale, capsys):
    lines, problems = [], {}
    for row in COMPARED:
        diff = differences_from_baseline(row, scale)
        lines.append(f"{row.table} {row.label!r} ({row.backbone}) vs {row.baseline!r}, components "
                     f"{'+'.join(row.components)}: " + ", ".join(f"{k} {a!r}->{b!r}" for k, (a, b) in diff.items()))
        if unexplained(row, scale):
            problems[row.key] = unexplained(row, scale)
    with capsys.disabled():
        print(f"\n[{scale}] resolved fields that differ from each row's baseline:\n  " + "\n  ".join(lines))
    assert not problems


def test_the_check_catches_a_confounded_row():
    """The spelling these tables used before: naive SC from the scnet preset with FR and GC off (and the
    plain semantic head that apply_flags then coupled to naive SC), against Cascade + semantic: it also
    differs in SCNet's low-quality matching."""
    base = next(r for r in TABLES["table3"] if r.label == "CM R-CNN")
    old_cascade = RowSpec("table3", "old CM R-CNN", "cascade_mask_rcnn", "r50",
                          flags={"semantic": True, **PAPER_TEST_PROTOCOL})
    old_naive = RowSpec("table3", "old naive SC", "scnet", "r50", baseline="old CM R-CNN", components=("naive SC",),
                        flags={"feature_relay": False, "global_context": False, "sample_consistency": "naive",
                               "semantic_residual": False})
    problems = unexplained(old_naive, "paper", old_cascade)
    assert any("rcnn_match_low_quality" in p for p in problems), problems
    # and a row whose flags do not switch its component on is caught too
    lazy = RowSpec("table3", "lazy", "cascade_mask_rcnn", "r50", flags=dict(ABLATION_BASE), baseline="CM R-CNN",
                   components=("SC",))
    assert unexplained(lazy, "paper", base) == ["component 'SC' changes none of ('sample_consistency', 'mask_convs')"]


@pytest.mark.parametrize("scale", ["paper", "smoke"])
def test_every_row_is_tested_with_the_papers_protocol(scale):
    for rows in TABLES.values():
        for row in rows:
            if row.run:
                assert model_config_for(row, scale).test_score_thr == PAPER_TEST_PROTOCOL["test_score_thr"]
                assert row.flags["test_score_thr"] == 0.001  # visible in each run's config.json


def test_full_model_is_mmdetections_scnet_and_table1_is_mmdetections_configs():
    full = next(r for r in TABLES["table2"] if r.label == "+ SC + FR + GC")
    assert model_config_for(full, "paper") == resolve_config("scnet_r50")
    for row in TABLES["table1"]:
        if row.run and row.label != "Cascade Mask R-CNN":
            own = resolve_config(preset_for(row, "paper"))
            assert model_config_for(row, "paper") == own.replace(**PAPER_TEST_PROTOCOL), row.key
    cascade = next(r for r in TABLES["table1"] if r.label == "Cascade Mask R-CNN")
    assert differences_from_baseline(cascade, "paper", RowSpec("table1", "own", "cascade_mask_rcnn", "r50")) == {
        "semantic": (False, True), "test_score_thr": (0.05, 0.001)}


def test_every_table_run_trains_the_papers_20_epochs():
    for spec in build_matrix(list(TABLES), "paper", Path("/coco")):
        schedule = spec.config.schedule
        assert (schedule.epochs, schedule.lr_steps, schedule.lr, schedule.batch_size) == (20, (16, 19), 0.02, 16)
