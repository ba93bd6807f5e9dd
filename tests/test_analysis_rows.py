"""experiments.tables: which network each paper row is, and run matching by resolved config."""
from __future__ import annotations

import json

import pytest

from analysis.matching import model_key, row_key
from experiments.tables import TABLES, RowSpec, model_config_for, preset_for, rows_of, table_names


def row(table: str, label: str, backbone: str = "r50") -> RowSpec:
    return next(r for r in TABLES[table] if r.label == label and r.backbone == backbone)


def test_table_names_and_unknown_table():
    assert table_names() == ["table1", "table2", "table3", "table4", "table5", "figure1"]
    with pytest.raises(KeyError, match="known: table1"):
        rows_of("table9")


@pytest.mark.parametrize("scale", ["smoke", "paper"])
def test_every_run_row_resolves(scale):
    for rows in TABLES.values():
        for spec in rows:
            if spec.run:
                cfg = model_config_for(spec, scale, num_classes=5, num_semantic_classes=6)
                assert cfg.num_classes == 5
                expected_backbone = "resnet18" if scale == "smoke" else \
                    {"r50": "resnet50", "r101": "resnet101", "x101_64x4d": "resnext101_64x4d"}[spec.backbone]
                assert cfg.backbone == expected_backbone


def test_presets_by_scale_and_quoted_rows_have_none():
    assert preset_for(row("table1", "HTC", "r101"), "paper") == "htc_r101"
    assert preset_for(row("table1", "HTC", "r101"), "smoke") == "htc_r18_smoke"
    for label in ("PANet", "LevelSet R-CNN", "BlendMask", "BMask R-CNN"):
        assert not row("table1", label).run
    with pytest.raises(ValueError, match="not run by this project"):
        preset_for(row("table1", "D2Det", "r101"), "paper")
    with pytest.raises(ValueError, match="unknown scale"):
        preset_for(row("table2", "+ SC"), "huge")


@pytest.mark.parametrize("scale", ["smoke", "paper"])
def test_rows_describing_one_network_resolve_to_one_config(scale):
    same = [
        [("table2", "Cascade Mask R-CNN"), ("table3", "CM R-CNN"), ("table4", "Cascade Mask R-CNN"),
         ("figure1", "training w/o SC")],
        [("table1", "Cascade Mask R-CNN")],  # MMDetection's config + HTC's semantic head, not the ablation base
        [("table1", "Mask R-CNN"), ("table4", "Mask R-CNN")],
        [("table2", "+ FR"), ("table4", "Cascade Mask R-CNN + FR")],
        [("table2", "+ SC"), ("table3", "CM R-CNN + effective SC")],
        [("table3", "CM R-CNN + naive SC")],
        [("table2", "+ GC")],
        [("table2", "+ SC + FR"), ("table5", "lambda=None")],
        [("table1", "SCNet"), ("table2", "+ SC + FR + GC"), ("table5", "lambda=3"), ("figure1", "training w/ SC"),
         ("figure1", "inference")],
    ]
    keys_by_group = []
    for group in same:
        configs = {json.dumps(model_config_for(row(t, label), scale).to_dict(), sort_keys=True) for t, label in group}
        assert len(configs) == 1, group
        keys_by_group.append(configs.pop())
    assert len(set(keys_by_group)) == len(same)  # and the groups are different networks


def test_row_flags_mean_what_the_paper_says():
    base = model_config_for(row("table2", "Cascade Mask R-CNN"), "paper")
    assert (base.stages, base.semantic, base.sample_consistency, base.mask_flow) == (3, True, "none", "cascade")
    assert (base.semantic_residual, base.rcnn_match_low_quality) == (True, True)  # the ablation base
    table1 = model_config_for(row("table1", "Cascade Mask R-CNN"), "paper")
    assert (table1.semantic, table1.semantic_residual, table1.rcnn_match_low_quality) == (True, False, False)
    sc = model_config_for(row("table2", "+ SC"), "paper")
    assert (sc.sample_consistency, sc.feature_relay, sc.global_context, sc.mask_convs) == ("effective", False, False, 12)
    naive = model_config_for(row("table3", "CM R-CNN + naive SC"), "paper")
    assert (naive.sample_consistency, naive.mask_convs, naive.semantic_residual) == ("naive", 4, True)
    assert model_config_for(row("table4", "Mask R-CNN + FR"), "paper").feature_relay
    assert model_config_for(row("table4", "Mask R-CNN + FR"), "paper").stages == 1
    assert not model_config_for(row("table5", "lambda=None"), "paper").global_context
    weights = [model_config_for(row("table5", f"lambda={w}"), "paper").glbctx_weight for w in (0, 1, 2, 3, 5)]
    assert weights == [0.0, 1.0, 2.0, 3.0, 5.0]


def test_smoke_rows_differing_only_in_backbone_are_one_network():
    keys = {row_key(row("table1", "SCNet", b), "smoke") for b in ("r50", "r101", "x101_64x4d")}
    assert len(keys) == 1
    keys = {row_key(row("table1", "SCNet", b), "paper") for b in ("r50", "r101", "x101_64x4d")}
    assert len(keys) == 3


def test_extra_flags_cannot_silently_override_a_row():
    with pytest.raises(ValueError, match="glbctx_weight"):
        model_config_for(row("table5", "lambda=0"), "smoke", glbctx_weight=2.0)
    assert model_config_for(row("table5", "lambda=0"), "smoke", glbctx_weight=0.0).glbctx_weight == 0.0


def test_model_key_ignores_dataset_facts_and_json_spelling():
    cfg = model_config_for(row("table5", "lambda=2"), "smoke").to_dict()
    as_json = json.loads(json.dumps(cfg))  # tuples become lists
    as_json["glbctx_weight"] = 2  # an int where the config has a float
    as_json["num_classes"] = 3
    assert model_key(as_json) == model_key(cfg) == row_key(row("table5", "lambda=2"), "smoke")
    older = dict(cfg)
    del older["mask_threshold"]  # a field older code did not write takes the default
    assert model_key(older) == model_key(cfg)
    changed = dict(cfg, glbctx_weight=2.5)
    assert model_key(changed) != model_key(cfg)
