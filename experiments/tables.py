"""The paper's Tables 1-5 and Figure 1 as data: which network each row is, and what it is compared with.

Pure data plus small helpers; importing this module has no side effects. The experiment harness turns
rows into runs, and the analysis matches runs back to rows, both through `model_config_for`, so a row
means the same network everywhere.

How rows are built (the paper does not say how its ablation networks were built, so one rule):
- Every row of Tables 2-5 and Figure 1 is Cascade Mask R-CNN on one common base (`ABLATION_BASE`): HTC's
  semantic branch with SCNet's residual head, and the box assigners' low-quality matching of MMDetection's
  SCNet (and HTC) config. The components a row's label names (sample consistency, feature relay, global
  context and its weight lambda) are flags on top (`COMPONENT_FLAGS`). So the full model (Table 2's last
  row, Table 5's lambda=3) is MMDetection's SCNet, and each row differs from its `baseline` row only in
  its `components`: `tests/test_ablation_rows.py` lists the resolved fields that differ and checks them
  against `COMPONENT_FIELDS`. The base is not MMDetection's Cascade Mask R-CNN config, whose assigners
  have match_low_quality=False; the captions say so (`TABLE_NOTES`).
- Table 1 compares methods as published: each row is its MMDetection 3.3.0 config; Cascade Mask R-CNN
  adds HTC's semantic branch (plain head), as the paper does for every cascade model.
- Every row is tested as the paper tests (`PAPER_TEST_PROTOCOL`: boxes scoring above 0.001 are
  segmented), including Mask R-CNN and Cascade Mask R-CNN, whose MMDetection configs (and our presets)
  use 0.05. The flag is in each run's config.json and, through the resolved network, in its id.
- Table 2's baseline, Table 3's "CM R-CNN", Table 4's "Cascade Mask R-CNN" and Figure 1's "training w/o
  SC" are one network; likewise Table 1's and Table 4's Mask R-CNN, Table 2's "+ FR" and Table 4's
  "Cascade Mask R-CNN + FR", Table 2's "+ SC + FR" and Table 5's lambda=None, and Table 2's
  "+ SC + FR + GC", Table 5's lambda=3 and Table 1's SCNet R-50.

At scale "smoke" every row uses its architecture's `*_r18_smoke` preset, so rows that differ only
by backbone (Table 1) are the same smoke network.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from scnet.config import ModelConfig
from scnet.engine.run_config import SCALES
from scnet.presets import resolve_config
from scnet.records.result import METRIC_NAMES

ARCHITECTURES = ("mask_rcnn", "cascade_mask_rcnn", "htc", "scnet")
BACKBONES = ("r50", "r101", "x101_64x4d")

MASK_COLUMNS = METRIC_NAMES  # mask AP, AP50, AP75, APS, APM, APL: a result's COCO metrics
# Table columns as in results/paper/paper_numbers.csv: AP.. are mask AP, APbb box AP, speed_fps images/s.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "table1": (*MASK_COLUMNS, "APbb", "speed_fps"),
    "table2": ("AP", "AP50", "AP75", "APbb", "speed_fps"),
    "table3": ("AP", "APbb", "speed_fps"),
    "table4": ("AP", "APbb", "speed_fps"),
    "table5": (*MASK_COLUMNS, "APbb"),
    "figure1": ("share_le_0.75",),
}

TABLE_TITLES: dict[str, str] = {
    "table1": "Benchmark of SCNet against other instance segmentation methods (paper: COCO test-dev)",
    "table2": "Component-wise ablation; baseline Cascade Mask R-CNN with semantic branch (paper: COCO val)",
    "table3": "Naive vs effective sample consistency (paper: COCO val)",
    "table4": "Feature relay on Mask R-CNN and Cascade Mask R-CNN (paper: COCO val)",
    "table5": "Global-context loss weight lambda on SCNet (paper: COCO val)",
    "figure1": "IoU of the samples sent to the mask branch (paper: COCO train / val)",
}


@dataclass(frozen=True)
class RowSpec:
    """One row of a paper table: the network that produces it, or `run=False` if nothing does.

    `baseline` names the row of the same table (and backbone) this one is compared with, and
    `components` what it adds to that baseline (keys of `COMPONENT_FIELDS`). `iou_tags` (Figure 1 only)
    names the IoU recording of the run to plot; `difference_of` marks a row the paper derives from two
    other rows of the same table (label minus label).
    """

    table: str
    label: str
    architecture: str | None
    backbone: str
    flags: Mapping[str, Any] = field(default_factory=dict, hash=False)
    run: bool = True
    iou_tags: str | None = None
    difference_of: tuple[str, str] | None = None
    baseline: str | None = None
    components: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", MappingProxyType(dict(self.flags)))
        if self.backbone not in BACKBONES:
            raise ValueError(f"RowSpec {self.table}/{self.label}: backbone {self.backbone!r} not in {BACKBONES}")
        if self.run and self.architecture not in ARCHITECTURES:
            raise ValueError(f"RowSpec {self.table}/{self.label}: architecture {self.architecture!r} "
                             f"not in {ARCHITECTURES}")
        unknown = [c for c in self.components if c not in COMPONENT_FIELDS]
        if unknown or bool(self.components) != (self.baseline is not None):
            raise ValueError(f"RowSpec {self.table}/{self.label}: a baseline needs components and the other way "
                             f"round, each one of {sorted(COMPONENT_FIELDS)} (found {self.baseline!r}, "
                             f"{self.components})")

    @property
    def key(self) -> tuple[str, str, str]:
        """(table, label, backbone): unique within all tables; labels repeat across Table 1's backbones."""
        return (self.table, self.label, self.backbone)


# The paper's test protocol: "Only the detected boxes with classification scores higher than a threshold
# of 0.001 are segmented by the mask branch." Set on every row, whatever its preset's own test config.
PAPER_TEST_PROTOCOL: Mapping[str, Any] = MappingProxyType({"test_score_thr": 0.001})

# The base every row of Tables 2-5 and Figure 1 shares: Cascade Mask R-CNN with HTC's semantic branch as
# SCNet builds it (residual convs), and SCNet's (and HTC's) low-quality matching in the box assigners.
ABLATION_BASE: Mapping[str, Any] = MappingProxyType(
    {"semantic": True, "semantic_residual": True, "rcnn_match_low_quality": True, **PAPER_TEST_PROTOCOL})

# What each component may change in the resolved ModelConfig relative to its baseline row. Effective
# sample consistency is one deep mask branch (12 convs, scnet.config.with_coupled_flags); Table 1's
# methods are whole MMDetection configs compared with Cascade Mask R-CNN + HTC's semantic branch.
COMPONENT_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "SC": ("sample_consistency", "mask_convs"),
    "naive SC": ("sample_consistency",),
    "FR": ("feature_relay",),
    "GC": ("global_context",),
    "lambda": ("global_context", "glbctx_weight"),
    "HTC": ("mask_flow", "rcnn_match_low_quality"),
    "SCNet": ("sample_consistency", "mask_convs", "feature_relay", "global_context", "semantic_residual",
              "rcnn_match_low_quality"),
})
# The flags that switch an ablation component on (Table 5's lambda rows set their weight themselves).
COMPONENT_FLAGS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "SC": {"sample_consistency": "effective"},
    "naive SC": {"sample_consistency": "naive"},
    "FR": {"feature_relay": True},
    "GC": {"global_context": True},
})


def _row(table: str, label: str, architecture: str | None, backbone: str = "r50", **kw: Any) -> RowSpec:
    return RowSpec(table, label, architecture, backbone, **kw)


def _ablation(table: str, label: str, *on: str, baseline: str | None = None, adds: tuple[str, ...] = (),
              **kw: Any) -> RowSpec:
    """A row of Tables 2-5 / Figure 1: the common base with the components `on` switched on."""
    flags = dict(ABLATION_BASE)
    for component in on:
        flags.update(COMPONENT_FLAGS[component])
    flags.update(kw.pop("flags", {}))
    return RowSpec(table, label, "cascade_mask_rcnn", "r50", flags=flags, baseline=baseline, components=adds, **kw)


def _table1() -> list[RowSpec]:
    rows = [
        _row("table1", "Mask R-CNN", "mask_rcnn", flags=PAPER_TEST_PROTOCOL),
        _row("table1", "PANet", None, run=False),
        _row("table1", "LevelSet R-CNN", None, run=False),
        _row("table1", "BlendMask", None, run=False),
        _row("table1", "BMask R-CNN", None, run=False),
        _row("table1", "D2Det", None, "r101", run=False),
    ]
    cascade = "Cascade Mask R-CNN"
    for backbone in BACKBONES:
        rows += [
            _row("table1", cascade, "cascade_mask_rcnn", backbone, flags={"semantic": True, **PAPER_TEST_PROTOCOL}),
            _row("table1", "HTC", "htc", backbone, flags=PAPER_TEST_PROTOCOL, baseline=cascade, components=("HTC",)),
            _row("table1", "SCNet", "scnet", backbone, flags=PAPER_TEST_PROTOCOL, baseline=cascade,
                 components=("SCNet",)),
        ]
    return rows


_BASE2 = "Cascade Mask R-CNN"
_LAMBDA_NONE = "lambda=None"

TABLES: dict[str, list[RowSpec]] = {
    "table1": _table1(),
    "table2": [
        _ablation("table2", _BASE2),
        _ablation("table2", "+ SC", "SC", baseline=_BASE2, adds=("SC",)),
        _ablation("table2", "+ FR", "FR", baseline=_BASE2, adds=("FR",)),
        _ablation("table2", "+ GC", "GC", baseline=_BASE2, adds=("GC",)),
        # the paper's text: "When sample consistency and feature relay is combined, the mask AP increase
        # from 38.8 to 39.0", so each combined row is compared with the row it adds one component to
        _ablation("table2", "+ SC + FR", "SC", "FR", baseline="+ SC", adds=("FR",)),
        _ablation("table2", "+ SC + FR + GC", "SC", "FR", "GC", baseline="+ SC + FR", adds=("GC",)),
        _row("table2", "Overall improvement", None, run=False, difference_of=("+ SC + FR + GC", _BASE2)),
    ],
    "table3": [
        _ablation("table3", "CM R-CNN"),
        _ablation("table3", "CM R-CNN + naive SC", "naive SC", baseline="CM R-CNN", adds=("naive SC",)),
        _ablation("table3", "CM R-CNN + effective SC", "SC", baseline="CM R-CNN", adds=("SC",)),
    ],
    "table4": [
        _row("table4", "Mask R-CNN", "mask_rcnn", flags=PAPER_TEST_PROTOCOL),
        _row("table4", "Mask R-CNN + FR", "mask_rcnn", flags={"feature_relay": True, **PAPER_TEST_PROTOCOL},
             baseline="Mask R-CNN", components=("FR",)),
        _ablation("table4", "Cascade Mask R-CNN"),
        _ablation("table4", "Cascade Mask R-CNN + FR", "FR", baseline="Cascade Mask R-CNN", adds=("FR",)),
    ],
    "table5": [
        _ablation("table5", _LAMBDA_NONE, "SC", "FR"),
        *[_ablation("table5", f"lambda={w:g}", "SC", "FR", "GC", flags={"glbctx_weight": float(w)},
                    baseline=_LAMBDA_NONE, adds=("lambda",)) for w in (0, 1, 2, 3, 5)],
    ],
    "figure1": [
        _ablation("figure1", "training w/o SC", iou_tags="train/"),
        _ablation("figure1", "training w/ SC", "SC", "FR", "GC", iou_tags="train/stage2"),
        # detections matched to a ground truth (IoU >= 0.5, as the training positives); "inference" holds all
        _ablation("figure1", "inference", "SC", "FR", "GC", iou_tags="inference/matched"),
    ],
}

_ABLATION_NOTE = ("Rows: Cascade Mask R-CNN with HTC's semantic branch built as SCNet builds it (residual convs) "
                  "and the low-quality matching of MMDetection's SCNet and HTC box assigners "
                  "(match_low_quality=True; its Cascade Mask R-CNN config has False), plus the components a "
                  "row names; so the full model is MMDetection's SCNet and each row differs from its baseline "
                  "only in the components it adds (the paper does not say how its rows were built). Test: boxes "
                  "scoring above 0.001 are segmented, as in the paper.")
# Caption notes on how each table's rows were built (beside the analysis's notes on scale and noise).
TABLE_NOTES: dict[str, str] = {
    "table1": ("Rows: each method as MMDetection 3.3.0 configures it; Cascade Mask R-CNN adds HTC's semantic "
               "branch (plain convs), as the paper does, and keeps its match_low_quality=False. Test: boxes "
               "scoring above 0.001 are segmented, as in the paper (MMDetection's Mask R-CNN and Cascade "
               "configs use 0.05)."),
    "table2": _ABLATION_NOTE,
    "table3": _ABLATION_NOTE,
    "table4": ("Mask R-CNN rows: MMDetection 3.3.0's Mask R-CNN, tested with the paper's 0.001. Cascade rows: "
               + _ABLATION_NOTE[len("Rows: "):]),
    "table5": _ABLATION_NOTE + " lambda=None: no global-context branch.",
    "figure1": ("Panel (a) is Table 2's baseline (Cascade Mask R-CNN on the tables' common base: SCNet's residual "
                "semantic head and low-quality matching), panels (b) and (c) its full model, MMDetection's SCNet; "
                "the paper does not say which networks its panels come from. Test: boxes scoring above 0.001 "
                "are segmented, as in the paper."),
}


def table_names() -> list[str]:
    return list(TABLES)


def rows_of(name: str) -> list[RowSpec]:
    """The rows of one table; an unknown name lists the known ones."""
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    return TABLES[name]


def preset_for(row: RowSpec, scale: str) -> str:
    """The preset a row's network starts from at a scale ("paper": the row's backbone; "smoke": ResNet-18)."""
    if not row.run or row.architecture is None:
        raise ValueError(f"{row.table} row {row.label!r} is not run by this project "
                         "(quoted from other work or derived from other rows); it has no preset")
    if scale == "paper":
        return f"{row.architecture}_{row.backbone}"
    if scale == "smoke":
        return f"{row.architecture}_r18_smoke"
    raise ValueError(f"unknown scale {scale!r}; use one of {SCALES}")


def model_config_for(row: RowSpec, scale: str, **extra: Any) -> ModelConfig:
    """The row's resolved network; `extra` adds dataset facts (num_classes, num_semantic_classes)."""
    clashes = {k for k in extra if k in row.flags and extra[k] != row.flags[k]}
    if clashes:
        raise ValueError(f"{row.table} row {row.label!r} defines {sorted(clashes)} itself "
                         f"({ {k: row.flags[k] for k in sorted(clashes)} }); do not override them")
    return resolve_config(preset_for(row, scale), **{**row.flags, **extra})


def baseline_of(row: RowSpec) -> RowSpec | None:
    """The row `row` is compared with (same table and backbone), or None."""
    if row.baseline is None:
        return None
    for other in TABLES[row.table]:
        if other.label == row.baseline and other.backbone == row.backbone:
            return other
    raise KeyError(f"{row.table} row {row.label!r}: no baseline row {row.baseline!r} ({row.backbone})")


def differences_from_baseline(row: RowSpec, scale: str, baseline: RowSpec | None = None) -> dict[str, tuple[Any, Any]]:
    """Resolved ModelConfig fields where `row` differs from its baseline: {field: (baseline's, row's)}."""
    baseline = baseline or baseline_of(row)
    if baseline is None:
        raise ValueError(f"{row.table} row {row.label!r} has no baseline")
    ours, theirs = model_config_for(row, scale).to_dict(), model_config_for(baseline, scale).to_dict()
    return {name: (theirs[name], ours[name]) for name in ours if ours[name] != theirs[name]}

